// Package cluster runs a whole chainwarden fleet on one machine, as operators run it on many: every host in a network
// namespace of its own with its own address on one bridge, running what the node image (packer/) runs there, with
// the image's own config files:
//   - control hosts: Consul servers (real raft, gossip between the hosts' addresses, gossip encryption on) and
//     Nomad servers (finding each other through Consul);
//   - chain hosts: a Consul client agent, a Nomad client (the image's nomad.hcl; it finds its servers through
//     Consul; no jobs run here, the chain nodes are started by the harness), a geth Clique sealer and a CometBFT
//     validator (one network each across the chain hosts), and the chainwarden agent (the real binary) talking
//     only to its local Consul agent;
//   - a proxy host: a Consul client agent, consul-template rendering nginx and HAProxy, both proxies serving.
//
// The harness can kill a host (every process in its namespace), cut its link and heal it, and restart any one
// process; Close stops everything it started and removes every namespace. The integration test (TestFleet) and
// `make fleet-demo` (cmd/chainwarden-fleet) both use it. It needs root (network namespaces) and the components of
// `make deps`; it never touches the machine's own network namespace.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Roles of hosts.
const (
	RoleServer = "server"
	RoleChain  = "chain"
	RoleProxy  = "proxy"
)

// Services the chain hosts' agents register: one geth network, one CometBFT network.
const (
	EthService   = "eth-fleet"
	CometService = "comet-fleet"
)

// timeoutUnit scales the harness's waits: generous, for a loaded 2-core machine.
const timeoutUnit = time.Minute

var randRead = rand.Read

// Options configure Start.
type Options struct {
	Dir        string       // where hosts keep their configs, data and logs (required)
	Root       string       // the repository (packer/files, consul-templates); default: found from this source file (not under -trimpath)
	AgentBin   string       // the chainwarden binary (required)
	ChainHosts int          // default 4: a CometBFT network of 4 validators and a Clique network of 4 sealers both outlive one lost host
	Log        hclog.Logger // default: discard
}

// Fleet is a running fleet.
type Fleet struct {
	Servers []*Host
	Chains  []*Host
	Proxy   *Host

	NginxURL    string // http://IP:PORT of the nginx proxy (reachable inside the namespaces, e.g. Proxy.HTTPClient)
	HAProxyURL  string
	NginxLive   string // the live rendered configs, on this machine's filesystem
	HAProxyLive string
	CometChain  string // the CometBFT chain id

	opts   Options
	log    hclog.Logger
	ipBin  string
	prefix string
	sw     *netns
	key    string // the gossip key, in the hosts' secrets.hcl only
	mgmt   string // this run's ACL management token: in memory, and in a 0600 file Close removes
	// nomadConsulToken is the Nomad agents' Consul token (policy nomad-agent), in their 0600 nomad.env files.
	nomadConsulToken string

	// ProxyTokenFile holds the proxy's read-only Consul token (chainwarden-proxy policy), on this machine.
	ProxyTokenFile string

	mu      sync.Mutex
	hosts   []*Host
	secrets []string // files holding secrets, removed by Close
}

// Host is one machine of the fleet.
type Host struct {
	Name string
	Role string
	IP   string
	Dir  string

	f           *Fleet
	ns          *netns
	gethSigner  string // the sealer address of its geth
	consulToken string // its Consul agent's token (clients: in secrets.hcl)
	consulOnce  sync.Once
	consul      *consulapi.Client
	nomadOnce   sync.Once
	nomad       *nomadapi.Client
	port        string // its veth on the switch
	mu          sync.Mutex
	procs       []*proc
}

type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	envFile string       // read at every start, as systemd's EnvironmentFile
	pre     func() error // run before every start, as systemd's ExecStartPre
	dir     string
	ready   func(ctx context.Context) error
	p       *devnet.Process
}

// Start builds the fleet and waits until every chain node passes and both proxies route to all of them. On error,
// what was started is stopped again.
func Start(ctx context.Context, o Options) (_ *Fleet, err error) {
	if o.Dir == "" || o.AgentBin == "" {
		return nil, errors.New("cluster: Options.Dir and Options.AgentBin are required")
	}
	if o.Root == "" {
		_, file, _, _ := runtime.Caller(0)
		o.Root = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	}
	if o.ChainHosts == 0 {
		o.ChainHosts = 4
	}
	if o.ChainHosts < 3 || o.ChainHosts > 9 {
		return nil, fmt.Errorf("cluster: ChainHosts %d: want 3 to 9", o.ChainHosts)
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	ipBin, err := devnet.Bin("ip")
	if err != nil {
		return nil, err
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	f := &Fleet{opts: o, log: o.Log.Named("cluster"), ipBin: ipBin, prefix: "cwf" + hex.EncodeToString(b)}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := f.makeNetwork(); err != nil {
		return f, err
	}
	if f.key, err = gossipKey(); err != nil {
		return f, err
	}
	if f.mgmt, err = randomToken(); err != nil {
		return f, err
	}
	if err := f.startServers(ctx); err != nil {
		return f, err
	}
	if err := f.startChains(ctx); err != nil {
		return f, err
	}
	if err := f.startProxy(ctx); err != nil {
		return f, err
	}
	if err := f.waitAllRouted(ctx, 3*time.Minute); err != nil {
		return f, err
	}
	return f, f.WaitNomad(ctx)
}

// makeNetwork makes the switch (a namespace holding a bridge) and every host's namespace, linked to it by a veth
// pair: 10.77.0.1-3 the servers, 10.77.0.11- the chain hosts, 10.77.0.21 the proxy host.
func (f *Fleet) makeNetwork() error {
	sw, err := newNetns(f.ipBin, f.prefix+"-sw")
	if err != nil {
		return err
	}
	f.sw = sw
	if err := sw.run("ip", "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := sw.run("ip", "link", "set", "br0", "up"); err != nil {
		return err
	}
	add := func(name, role, ip string) (*Host, error) {
		h := &Host{Name: name, Role: role, IP: ip, Dir: filepath.Join(f.opts.Dir, name), f: f, port: "v-" + name}
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return nil, err
		}
		ns, err := newNetns(f.ipBin, f.prefix+"-"+name)
		if err != nil {
			return nil, err
		}
		h.ns = ns
		f.mu.Lock()
		f.hosts = append(f.hosts, h)
		f.mu.Unlock()
		for _, args := range [][]string{
			{"ip", "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", ns.name},
			{"ip", "link", "set", h.port, "master", "br0", "up"},
		} {
			if err := sw.run(args...); err != nil {
				return nil, err
			}
		}
		for _, args := range [][]string{
			{"ip", "addr", "add", ip + "/24", "dev", "eth0"},
			{"ip", "link", "set", "eth0", "up"},
		} {
			if err := ns.run(args...); err != nil {
				return nil, err
			}
		}
		return h, nil
	}
	for i := 1; i <= 3; i++ {
		h, err := add(fmt.Sprintf("server%d", i), RoleServer, fmt.Sprintf("10.77.0.%d", i))
		if err != nil {
			return err
		}
		f.Servers = append(f.Servers, h)
	}
	for i := 1; i <= f.opts.ChainHosts; i++ {
		h, err := add(fmt.Sprintf("chain%d", i), RoleChain, fmt.Sprintf("10.77.0.%d", 10+i))
		if err != nil {
			return err
		}
		f.Chains = append(f.Chains, h)
	}
	h, err := add("proxy1", RoleProxy, "10.77.0.21")
	if err != nil {
		return err
	}
	f.Proxy = h
	f.log.Info("network made", "namespaces", f.prefix+"-*", "hosts", len(f.hosts))
	return nil
}

// Namespaces lists the fleet's namespace names (the switch's first).
func (f *Fleet) Namespaces() []string {
	out := []string{f.prefix + "-sw"}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.hosts {
		out = append(out, h.ns.name)
	}
	return out
}

// Prefix is what every namespace name of this fleet starts with.
func (f *Fleet) Prefix() string { return f.prefix }

// Close stops every process the fleet started and removes every namespace; it can be called more than once.
func (f *Fleet) Close() error {
	f.mu.Lock()
	hosts := f.hosts
	f.hosts = nil
	sw := f.sw
	f.sw = nil
	f.mu.Unlock()
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	for _, h := range hosts { // hosts stop in parallel, each host's processes last to first
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.mu.Lock()
			for i := len(h.procs) - 1; i >= 0; i-- {
				if p := h.procs[i].p; p != nil {
					p.Kill()
				}
			}
			h.mu.Unlock()
			if err := h.ns.remove(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	f.mu.Lock()
	for _, s := range f.secrets {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	f.secrets = nil
	f.mu.Unlock()
	if sw != nil {
		if err := sw.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Hosts lists every host, servers first.
func (f *Fleet) Hosts() []*Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Host(nil), f.hosts...)
}

// add declares a process of the host; Start and Restart run it.
func (h *Host) add(name, bin string, args []string, ready func(ctx context.Context) error) *proc {
	pr := &proc{name: name, bin: bin, args: args, ready: ready}
	h.procs = append(h.procs, pr)
	return pr
}

func (h *Host) find(name string) (*proc, error) {
	for _, pr := range h.procs {
		if pr.name == name {
			return pr, nil
		}
	}
	return nil, fmt.Errorf("%s runs no %s", h.Name, name)
}

func (h *Host) start(ctx context.Context, pr *proc) error {
	if pr.pre != nil {
		if err := pr.pre(); err != nil {
			return fmt.Errorf("%s: before %s: %w", h.Name, pr.name, err)
		}
	}
	args := append([]string{"netns", "exec", h.ns.name, pr.bin}, pr.args...)
	env := pr.env
	if pr.envFile != "" {
		more, err := envFile(pr.envFile)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		env = append(append([]string(nil), env...), more...)
	}
	p, err := devnet.Start(h.Dir, pr.dir, env, pr.name, h.f.ipBin, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	pr.p = p
	if pr.ready == nil {
		return nil
	}
	if err := devnet.Poll(ctx, 2*time.Minute, h.Name+" "+pr.name+" ready", p, func() error { return pr.ready(ctx) }); err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	return nil
}

// Start (re)starts every process of the host in order, each waiting for the one before it to be ready.
func (h *Host) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, pr := range h.procs {
		if pr.p != nil && !pr.p.Exited() {
			continue
		}
		if err := h.start(ctx, pr); err != nil {
			return err
		}
	}
	return nil
}

// Kill kills every process in the host's namespace at once (SIGKILL), as a host that loses power: nothing leaves
// gracefully. It returns when they have all ended.
func (h *Host) Kill() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := h.ns.killAll(); err != nil {
		return err
	}
	for _, pr := range h.procs {
		if pr.p != nil {
			<-pr.p.Done()
		}
	}
	return nil
}

// Stop ends one process of the host with sig (SIGTERM: as systemd stops it) and waits for it.
func (h *Host) Stop(name string, sig syscall.Signal) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	pr, err := h.find(name)
	if err != nil {
		return err
	}
	if pr.p == nil || pr.p.Exited() {
		return nil
	}
	if err := pr.p.Signal(sig); err != nil {
		return err
	}
	select {
	case <-pr.p.Done():
	case <-time.After(30 * time.Second):
		pr.p.Kill()
	}
	return nil
}

// Restart starts one stopped process of the host again and waits until it is ready.
func (h *Host) Restart(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	pr, err := h.find(name)
	if err != nil {
		return err
	}
	if pr.p != nil && !pr.p.Exited() {
		return fmt.Errorf("%s: %s still runs", h.Name, name)
	}
	return h.start(ctx, pr)
}

// Partition takes the host's link to the switch down: packets neither leave nor reach it, its processes run on.
func (h *Host) Partition() error { return h.f.sw.run("ip", "link", "set", h.port, "down") }

// Heal brings the host's link up again.
func (h *Host) Heal() error { return h.f.sw.run("ip", "link", "set", h.port, "up") }

// HTTPClient makes its connections from inside the host (e.g. to its 127.0.0.1:8500).
func (h *Host) HTTPClient(timeout time.Duration) *http.Client { return h.ns.httpClient(timeout) }

// Consul is an API client of the host's own Consul agent (127.0.0.1:8500 inside the host) with the fleet's
// management token. It is made once per host: Consul limits the connections of one client address
// (http_max_conns_per_client).
func (h *Host) Consul() *consulapi.Client {
	h.consulOnce.Do(func() { h.consul = h.ConsulAs(h.f.mgmt) })
	return h.consul
}

// ConsulDataDir is where the host's Consul agent keeps its state.
func (h *Host) ConsulDataDir() string { return filepath.Join(h.Dir, "consul-data") }

// Log returns the tail of one process's log.
func (h *Host) Log(name string, lines int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	pr, err := h.find(name)
	if err != nil || pr.p == nil {
		return ""
	}
	return pr.p.Tail(lines)
}

// Logs returns the tail of every process's log on the host.
func (h *Host) Logs(lines int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, pr := range h.procs {
		if pr.p != nil {
			fmt.Fprintf(&b, "--- %s %s ---\n%s\n", h.Name, pr.name, pr.p.Tail(lines))
		}
	}
	return b.String()
}

// PID is the process id of one process of the host (0 when it does not run).
func (h *Host) PID(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	pr, err := h.find(name)
	if err != nil || pr.p == nil || pr.p.Exited() {
		return 0
	}
	return pr.p.Cmd.Process.Pid
}
