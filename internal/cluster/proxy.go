package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Proxy ports on the proxy host.
const (
	nginxPort   = 8545
	haproxyPort = 8546
)

// startProxy sets up the proxy host as the image's proxy role does: consul-templates/nginx and /haproxy copied as
// deployed (same consul-template.hcl talking to 127.0.0.1:8500, same apply.sh), a first render, both proxies
// started on it, then the consul-template daemons.
func (f *Fleet) startProxy(ctx context.Context) error {
	h := f.Proxy
	if err := f.proxyTokens(h); err != nil {
		return err
	}
	if err := f.addConsul(h); err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return err
	}
	ctBin, err := devnet.Bin("consul-template")
	if err != nil {
		return err
	}
	nginxBin, err := devnet.Bin("nginx")
	if err != nil {
		return err
	}
	haproxyBin, err := devnet.Bin("haproxy")
	if err != nil {
		return err
	}
	ngDir, hpDir := filepath.Join(h.Dir, "nginx"), filepath.Join(h.Dir, "haproxy")
	prefix := filepath.Join(h.Dir, "nginx-prefix") + "/"
	for _, d := range []string{filepath.Join(prefix, "logs"), filepath.Join(prefix, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for kind, dir := range map[string]string{"nginx": ngDir, "haproxy": hpDir} {
		if err := copyDir(filepath.Join(f.opts.Root, "consul-templates", kind), dir); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, "staging"), 0o700); err != nil {
			return err
		}
	}
	f.NginxURL = fmt.Sprintf("http://%s:%d", h.IP, nginxPort)
	f.HAProxyURL = fmt.Sprintf("http://%s:%d", h.IP, haproxyPort)
	f.NginxLive = filepath.Join(ngDir, "rpc-proxy.conf")
	f.HAProxyLive = filepath.Join(hpDir, "rpc-proxy.cfg")
	ngEnv := []string{fmt.Sprintf("CHAINWARDEN_PROXY_LISTEN=%s:%d", h.IP, nginxPort), "NGINX=" + nginxBin,
		"CHAINWARDEN_NGINX_PREFIX=" + prefix}
	hpPid := filepath.Join(hpDir, "haproxy.pid")
	hpEnv := []string{fmt.Sprintf("CHAINWARDEN_PROXY_LISTEN=%s:%d", h.IP, haproxyPort), "HAPROXY=" + haproxyBin,
		"CHAINWARDEN_HAPROXY_PIDFILE=" + hpPid}
	client := h.ns.httpClient(3 * time.Second)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range []struct {
		name, dir string
		env       []string
	}{{"render-nginx", ngDir, ngEnv}, {"render-haproxy", hpDir, hpEnv}} {
		pr := &proc{name: p.name, bin: ctBin, args: []string{"-once", "-config", "consul-template.hcl", "-log-level", "warn"},
			env: p.env, dir: p.dir, envFile: filepath.Join(h.Dir, strings.TrimPrefix(p.name, "render-")+".env")}
		if err := h.start(ctx, pr); err != nil {
			return err
		}
		select {
		case <-pr.p.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	steps := []*proc{
		{name: "nginx", bin: nginxBin, args: []string{"-p", prefix, "-c", filepath.Join(ngDir, "nginx.conf"), "-g", "daemon off;"},
			ready: func(ctx context.Context) error { return getOK(ctx, client, f.NginxURL+"/healthz") }},
		{name: "haproxy", bin: haproxyBin, dir: hpDir, args: []string{"-W", "-db", "-p", hpPid, "-f", "haproxy.cfg", "-f", "rpc-proxy.cfg"},
			ready: func(ctx context.Context) error { return getOK(ctx, client, f.HAProxyURL+"/healthz") }},
		{name: "consul-template-nginx", bin: ctBin, dir: ngDir, env: ngEnv, envFile: filepath.Join(h.Dir, "nginx.env"),
			args: []string{"-config", "consul-template.hcl", "-log-level", "info"}},
		{name: "consul-template-haproxy", bin: ctBin, dir: hpDir, env: hpEnv, envFile: filepath.Join(h.Dir, "haproxy.env"),
			args: []string{"-config", "consul-template.hcl", "-log-level", "info"}},
	}
	for _, pr := range steps {
		h.procs = append(h.procs, pr)
		if err := h.start(ctx, pr); err != nil {
			return err
		}
	}
	f.log.Info("proxy host started", "nginx", f.NginxURL, "haproxy", f.HAProxyURL)
	return nil
}

func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// serverLine matches an upstream server of a chain node in either proxy's render: its address, whether it is a
// backup, and the node.
var (
	nginxServer   = regexp.MustCompile(`(?m)^\s*server (10\.77\.0\.\d+:\d+) [^;]*?( backup)?; # (\S+) (\S+)$`)
	haproxyServer = regexp.MustCompile(`(?m)^\s*server (\S+) (10\.77\.0\.\d+:\d+)( check)?( backup)? # (\S+)$`)
)

// Upstreams returns the chain nodes each proxy routes to now, as "node addr [backup]" lines sorted, from the live
// configs the proxies run (the RPC upstreams; WebSocket upstreams are the same nodes).
func (f *Fleet) Upstreams() (nginx, haproxy []string, err error) {
	ng, err := os.ReadFile(f.NginxLive)
	if err != nil {
		return nil, nil, err
	}
	hp, err := os.ReadFile(f.HAProxyLive)
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	for _, m := range nginxServer.FindAllStringSubmatch(string(ng), -1) {
		s := strings.TrimSpace(m[3] + " " + m[1] + m[2])
		if !seen["n"+s] {
			seen["n"+s] = true
			nginx = append(nginx, s)
		}
	}
	for _, m := range haproxyServer.FindAllStringSubmatch(string(hp), -1) {
		s := strings.TrimSpace(m[1] + " " + m[2] + m[4])
		if !seen["h"+s] {
			seen["h"+s] = true
			haproxy = append(haproxy, s)
		}
	}
	sort.Strings(nginx)
	sort.Strings(haproxy)
	return nginx, haproxy, nil
}

// Routed reports whether both proxies route to exactly the nodes given (not as backups).
func (f *Fleet) Routed(nodes []string) error {
	ng, hp, err := f.Upstreams()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	for kind, lines := range map[string][]string{"nginx": ng, "haproxy": hp} {
		got := map[string]bool{}
		for _, l := range lines {
			fields := strings.Fields(l)
			if len(fields) > 2 {
				return fmt.Errorf("%s: %s is a backup", kind, l)
			}
			got[fields[0]] = true
		}
		for n := range want {
			if !got[n] {
				return fmt.Errorf("%s does not route to %s (routes %v)", kind, n, lines)
			}
		}
		for n := range got {
			if !want[n] {
				return fmt.Errorf("%s still routes to %s", kind, n)
			}
		}
	}
	return nil
}

// AllNodes lists the node names of every chain host.
func (f *Fleet) AllNodes() []string {
	var out []string
	for _, h := range f.Chains {
		out = append(out, h.NodeIDs()...)
	}
	return out
}

func (f *Fleet) waitAllRouted(ctx context.Context, timeout time.Duration) error {
	err := devnet.Poll(ctx, timeout, "every chain node passing and routed by both proxies", nil, func() error {
		return f.Routed(f.AllNodes())
	})
	if err == nil {
		f.log.Info("fleet up", "nodes", len(f.AllNodes()))
	}
	return err
}
