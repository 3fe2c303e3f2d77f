package packer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/imdstest"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The test network, in a network namespace of the test's own: the instance's subnet on a tap device, and the
// addresses an EC2 instance reaches.
const (
	tap        = "tap0"
	gatewayIP  = "10.0.1.1" // the host side: DHCP, the EC2 API, the Consul and Nomad servers, a chain node
	instanceIP = "10.0.1.23"
	instanceMA = "52:54:00:c0:ff:ee"
	imdsAddr   = "169.254.169.254:80"
	ec2Addr    = gatewayIP + ":8080"
	nodeAddr   = gatewayIP + ":18545"

	instanceID = "i-0b007ed0c0ffee123"
	serverID   = "i-0c0a5e10000000001"
	zone       = "us-east-1a"
	datacenter = "boot"
	volumeName = "chaindata"
)

// testCloud is what EC2 gives an instance, around the virtual machine: DHCP (dnsmasq), the instance metadata
// service at 169.254.169.254 (IMDSv2 only, the repository's test server), the EC2 API (the repository's test
// server: volumes, attachments and the instances Consul's auto-join lists), a Consul server and a Nomad server on
// the subnet, and a chain node behind them. Attaching a volume hot-plugs an NVMe disk into the running machine,
// with the serial and model number EBS volumes have on Nitro instances.
type testCloud struct {
	t      *testing.T
	dir    string
	ns     *testenv.Netns
	img    nodeImage
	root   string // the instance's root disk: a qcow2 overlay on the cached image, kept across its boots
	ec2    *ec2test.Server
	imds   *imdstest.Server
	consul *consulapi.Client
	nomad  *nomadapi.Client
	http   *http.Client

	mu    sync.Mutex
	vm    *testenv.VM
	disks map[string]testenv.NVMeDisk // attached volumes' disks, by volume id
}

func newTestCloud(t *testing.T, img nodeImage) *testCloud {
	t.Helper()
	dnsmasq := testenv.Bin(t, "dnsmasq")
	consulBin := testenv.Bin(t, "consul")
	nomadBin := testenv.Bin(t, "nomad")
	qemuImg := testenv.Bin(t, "qemu-img")
	dir := t.TempDir()
	c := &testCloud{t: t, dir: dir, img: img, ns: testenv.NewNetns(t), disks: map[string]testenv.NVMeDisk{},
		root: filepath.Join(dir, "root.qcow2")}
	c.http = c.ns.HTTPClient()

	if out, err := exec.Command(qemuImg, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img.Root, c.root).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}

	c.ns.Must(t, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
	c.ns.Must(t, "ip", "addr", "add", gatewayIP+"/24", "dev", tap)
	c.ns.Must(t, "ip", "link", "set", tap, "up")
	c.ns.Must(t, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo")
	c.ns.Start(t, "dnsmasq", dnsmasq, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--port=0",
		"--interface="+tap, "--bind-interfaces", "--dhcp-authoritative", "--log-dhcp", "--user=root",
		"--dhcp-range="+instanceIP+","+instanceIP+",255.255.255.0,1h", "--dhcp-host="+instanceMA+","+instanceIP,
		"--dhcp-option=option:router,"+gatewayIP, "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"))

	// EC2: this instance, and the Consul server carrying the tag the instances' auto-join looks for.
	c.ec2 = ec2test.NewOn(c.ns.MustListen(t, "tcp", ec2Addr), ec2test.Delays{Create: 2 * time.Second, Attach: 2 * time.Second})
	t.Cleanup(c.ec2.Close)
	c.ec2.PutInstance(ec2test.Instance{ID: instanceID, AZ: zone, PrivateIP: instanceIP})
	c.ec2.PutInstance(ec2test.Instance{ID: serverID, AZ: zone, PrivateIP: gatewayIP,
		Tags: []ec2test.Tag{{Key: "chainwarden-consul", Value: datacenter}}})
	c.ec2.OnAttach = c.attach

	data := filepath.Join(dir, "consul-server")
	c.ns.Start(t, "consul-server", consulBin, "agent", "-server", "-bootstrap-expect=1", "-datacenter="+datacenter,
		"-node=consul-server", "-bind="+gatewayIP, "-client="+gatewayIP, "-data-dir="+data, "-hcl=ports { dns = -1 }")
	c.consul, _ = consulapi.NewClient(&consulapi.Config{Address: gatewayIP + ":8500", HttpClient: c.http})
	testenv.Eventually(t, time.Minute, "consul server leader", func() error {
		if l, err := c.consul.Status().Leader(); err != nil || l == "" {
			return fmt.Errorf("leader %q: %v", l, err)
		}
		return nil
	})

	nomadCfg := filepath.Join(dir, "nomad-server.hcl")
	os.WriteFile(nomadCfg, []byte(fmt.Sprintf(`datacenter = %q
data_dir   = %q
bind_addr  = %q
server {
  enabled          = true
  bootstrap_expect = 1
}
consul {
  address = "%s:8500"
}
`, datacenter, filepath.Join(dir, "nomad-server"), gatewayIP, gatewayIP)), 0o644)
	c.ns.Start(t, "nomad-server", nomadBin, "agent", "-config="+nomadCfg)
	c.nomad, _ = nomadapi.NewClient(&nomadapi.Config{Address: "http://" + gatewayIP + ":4646", HttpClient: c.http})
	testenv.Eventually(t, 2*time.Minute, "nomad server leader", func() error {
		if l, err := c.nomad.Status().Leader(); err != nil || l == "" {
			return fmt.Errorf("leader %q: %v", l, err)
		}
		return nil
	})

	// A chain node on the subnet, registered passing: what a proxy host's consul-template routes to.
	node := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":"0x2a"}`)
	}), ReadHeaderTimeout: 10 * time.Second}
	go node.Serve(c.ns.MustListen(t, "tcp", nodeAddr))
	t.Cleanup(func() { node.Close() })
	port, _ := strconv.Atoi(strings.TrimPrefix(nodeAddr, gatewayIP+":"))
	if err := c.consul.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: "geth-a", Name: "geth-test",
		Tags: []string{"chainwarden"}, Address: gatewayIP, Port: port,
		Check: &consulapi.AgentServiceCheck{CheckID: "geth-a-health", TTL: "1h", Status: "passing"}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// attach is EC2 attaching a volume to the running instance: a blank disk of the volume's size (sparse) appears on
// a new NVMe controller whose serial is the volume id without its hyphen, as on a Nitro instance. Its model number
// is QEMU's, not "Amazon Elastic Block Store", so udev's by-id link is nvme-QEMU_NVMe_Ctrl_vol... and
// chainwarden finds the disk by its serial in sysfs, its fallback when there is no EBS link.
func (c *testCloud) attach(volumeID, instanceID, device string) {
	var size int32
	for _, v := range c.ec2.Volumes() {
		if v.ID == volumeID {
			size = v.Size
		}
	}
	d := testenv.NVMeDisk{ID: "ebs-" + ebs.Serial(volumeID), File: filepath.Join(c.dir, volumeID+".img"),
		Serial: ebs.Serial(volumeID)}
	err := os.WriteFile(d.File, nil, 0o600)
	if err == nil {
		err = os.Truncate(d.File, int64(size)<<30)
	}
	if err != nil {
		c.t.Errorf("attach %s: %v", volumeID, err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.disks[volumeID] = d
	if c.vm == nil {
		c.t.Errorf("attach %s: no machine running", volumeID)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.vm.HotplugNVMe(ctx, d); err != nil {
		c.t.Errorf("attach %s as %s: %v", volumeID, device, err)
		return
	}
	c.t.Logf("attached %s (%d GiB) as NVMe serial %s", volumeID, size, d.Serial)
}

// boot powers the instance on with these tags and user-data (as EC2 would serve them from now on), with the
// volumes attached to it present from power-on, and waits for its serial shell.
func (c *testCloud) boot(name string, tags map[string]string, userData string) *testenv.VM {
	t := c.t
	t.Helper()
	if c.imds != nil {
		c.imds.Close()
	}
	c.imds = imdstest.NewOn(c.ns.MustListen(t, "tcp", imdsAddr), imdstest.Identity{InstanceID: instanceID,
		AvailabilityZone: zone, PrivateIP: instanceIP, Tags: maps.Clone(tags), UserData: []byte(userData),
		Role: "chainwarden-node"})
	t.Cleanup(c.imds.Close)
	c.mu.Lock()
	var disks []testenv.NVMeDisk
	for _, d := range c.disks {
		disks = append(disks, d)
	}
	c.mu.Unlock()
	vm := testenv.StartVM(t, testenv.VMConfig{Name: name, Kernel: c.img.Kernel, Initrd: c.img.Initrd, Root: c.root,
		// mitigations=off: page-table isolation costs much under software emulation; the rest is a normal boot.
		Cmdline: "root=/dev/vda rw loglevel=5 mitigations=off systemd.journald.forward_to_console=1",
		Netns:   c.ns, Tap: tap, MAC: instanceMA, NVMe: disks})
	c.mu.Lock()
	c.vm = vm
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := vm.WaitShell(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: serial shell answers %s after power-on", name, time.Since(vm.Started).Round(time.Second))
	return vm
}

// powerOff shuts the instance down from inside and waits for the machine to stop.
func (c *testCloud) powerOff(vm *testenv.VM) {
	c.t.Helper()
	if err := vm.Send("systemctl poweroff"); err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := vm.WaitExit(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.vm = nil
	c.mu.Unlock()
}

// bootReport is what one boot measured.
type bootReport struct {
	AgentReady  time.Duration // power-on (qemu started) to the agent answering /v1/health
	GuestUptime time.Duration // the guest's uptime then (from the kernel's start)
	Analyze     string        // systemd-analyze: kernel, initrd, userspace
}

// waitBooted waits for the agent to answer /v1/health (the boot's end for this test's figures) and for systemd to
// finish starting up, and checks that no unit failed.
func waitBooted(t *testing.T, vm *testenv.VM) bootReport {
	t.Helper()
	var r bootReport
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// The guest polls (once a second, no process of the test's in between): a poll from outside would cost the
	// emulated CPUs it measures.
	out, code, err := vm.Run(ctx, "until curl -fs -o /dev/null --max-time 5 http://127.0.0.1:9464/v1/health; do sleep 1; done; cut -d' ' -f1 /proc/uptime")
	if err != nil || code != 0 {
		diag, _, _ := vm.Run(context.Background(), "systemctl --no-legend list-units --failed; journalctl -b -u chainwarden-agent -n 20 -o cat")
		t.Fatalf("%s: the agent never answered /v1/health: %v\n%s\n%s", vm.Name, err, out, diag)
	}
	r.AgentReady = time.Since(vm.Started)
	if up, err := strconv.ParseFloat(strings.TrimSpace(out), 64); err == nil {
		r.GuestUptime = time.Duration(up * float64(time.Second))
	}
	state, _, err := vm.Run(ctx, "systemctl is-system-running --wait")
	if err != nil || strings.TrimSpace(state) != "running" {
		t.Errorf("%s: systemctl is-system-running = %q (%v); failed units:\n%s", vm.Name, strings.TrimSpace(state), err,
			vm.Must(t, "systemctl --no-legend list-units --failed; for u in $(systemctl --no-legend --plain list-units --failed | cut -d' ' -f1); do journalctl -b -u $u -n 15 -o cat; done"))
	}
	if failed := strings.TrimSpace(vm.Must(t, "systemctl --no-legend --plain list-units --failed")); failed != "" {
		t.Errorf("%s: failed units: %s", vm.Name, failed)
	}
	first, _, _ := strings.Cut(vm.Must(t, "systemd-analyze time"), "\n")
	r.Analyze = strings.TrimSpace(first)
	t.Logf("%s: agent ready %s after power-on (guest uptime %s); %s", vm.Name, r.AgentReady.Round(time.Second),
		r.GuestUptime.Round(time.Second), r.Analyze)
	return r
}

// unitTimes returns, per unit, when it began starting and when it was up (monotonic µs since boot).
func unitTimes(t *testing.T, vm *testenv.VM, units ...string) map[string][2]int64 {
	t.Helper()
	out := vm.Must(t, "for u in "+strings.Join(units, " ")+"; do echo \"$u $(systemctl show -P InactiveExitTimestampMonotonic $u) $(systemctl show -P ActiveEnterTimestampMonotonic $u)\"; done")
	times := map[string][2]int64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		a, _ := strconv.ParseInt(f[1], 10, 64)
		b, _ := strconv.ParseInt(f[2], 10, 64)
		times[f[0]] = [2]int64{a, b}
	}
	return times
}

// TestImageBoot boots the node image for real: a disk image made by the template's own provisioning (cached
// outside the repository), booted by qemu under a real kernel and systemd, on a subnet where the instance metadata
// service, the EC2 API, a Consul server and a Nomad server answer as EC2 and the cluster would. Everything is
// checked from outside the machine: the servers' APIs, the proxy on the instance's address, and the guest's serial
// shell. First boot (roles node and proxy): systemd reaches its target with no failed unit and in the units'
// order, the boot step wrote Consul's and Nomad's host configs from IMDS, chainwarden-volumes created, attached and
// formatted a blank EBS volume, Consul joined the server through EC2 auto-join, Nomad's client registered with the
// volume, the agent answers, consul-template rendered nginx which routes to the chain node. Second boot (roles node
// only, the volume holding a file): the volume is mounted as it is, not formatted, the file intact, and the proxy
// stays off.
func TestImageBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds (or takes from the cache) and boots a disk image of the node AMI (minutes)")
	}
	testenv.RequireRoot(t)
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img", "dnsmasq"} {
		testenv.Bin(t, bin) // before a cold image build
	}
	img := buildNodeImage(t)
	t.Logf("node image %s: kernel %s, root.ext4 %d MiB allocated (%d MiB of files), initrd %d MiB",
		img.Manifest.Key, img.Manifest.Kernel, img.Manifest.RootAllocated>>20, img.Manifest.TreeBytes>>20,
		img.Manifest.InitrdBytes>>20)
	c := newTestCloud(t, img)
	userData := "#chainwarden\ndatacenter = " + datacenter + "\nec2_endpoint = http://" + ec2Addr + "\n"
	tags := map[string]string{
		"Name":                "boot-test",
		"chainwarden-roles":   "node,proxy",
		"chainwarden-proxy":   "nginx",
		"chainwarden-volumes": volumeName + "=ethereum/devnet/geth/1",
	}

	// --- first boot ---
	vm := c.boot("boot-1", tags, userData)
	first := waitBooted(t, vm)

	t.Run("boot step wrote the host configs from IMDS", func(t *testing.T) {
		consulHCL := vm.Must(t, "cat /etc/consul.d/host.hcl")
		mustContain(t, "consul host.hcl", consulHCL, `datacenter     = "boot"`, `node_name      = "`+instanceID+`"`,
			`bind_addr      = "`+instanceIP+`"`,
			"provider=aws region=us-east-1 tag_key=chainwarden-consul tag_value=boot addr_type=private_v4 endpoint=http://"+ec2Addr)
		mustContain(t, "nomad host.hcl", vm.Must(t, "cat /etc/nomad.d/host.hcl"), `name       = "`+instanceID+`"`,
			`node_class = "node-proxy"`)
		mustContain(t, "agent.hcl", vm.Must(t, "cat /etc/chainwarden/agent.hcl"), `volume "`+volumeName+`"`)
		if got := strings.Fields(vm.Must(t, "ls /etc/chainwarden/enabled")); strings.Join(got, " ") != "node proxy proxy-nginx" {
			t.Errorf("enabled = %v", got)
		}
		if c.imds.Tokens() == 0 || c.imds.Refused() != 0 {
			t.Errorf("IMDS: %d session tokens, %d token-less (IMDSv1) requests refused", c.imds.Tokens(), c.imds.Refused())
		}
	})

	t.Run("units started in order", func(t *testing.T) {
		units := []string{"chainwarden-bootstrap.service", "consul.service", "docker.service", "chainwarden-volumes.service",
			"nomad.service", "chainwarden-agent.service", "consul-template@nginx.service"}
		tm := unitTimes(t, vm, units...)
		for _, o := range [][2]string{
			{"chainwarden-bootstrap.service", "consul.service"}, {"chainwarden-bootstrap.service", "chainwarden-volumes.service"},
			{"chainwarden-bootstrap.service", "docker.service"}, {"chainwarden-volumes.service", "nomad.service"},
			{"docker.service", "nomad.service"}, {"consul.service", "chainwarden-agent.service"},
			{"consul.service", "consul-template@nginx.service"},
		} {
			before, after := tm[o[0]], tm[o[1]]
			if before[1] == 0 || after[0] == 0 || before[1] > after[0] {
				t.Errorf("%s up at %dµs, %s started at %dµs: want it up first", o[0], before[1], o[1], after[0])
			}
		}
		if user := strings.TrimSpace(vm.Must(t, "ps -o user= -p $(systemctl show -P MainPID chainwarden-agent)")); user != "chainwarden" {
			t.Errorf("the agent runs as %q", user)
		}
	})

	var uuid string
	t.Run("a blank EBS volume was created, attached and formatted", func(t *testing.T) {
		vols := c.ec2.Volumes()
		if len(vols) != 1 {
			t.Fatalf("volumes in EC2: %+v", vols)
		}
		v := vols[0]
		if tag := tagOf(v.Tags, "chainwarden:volume"); tag != volumeName || v.Attachment == nil ||
			v.Attachment.InstanceID != instanceID || v.Attachment.State != "attached" || v.Size != 1 {
			t.Errorf("volume %+v (attachment %+v)", v, v.Attachment)
		}
		// The disk whose NVMe serial is the volume id (without its hyphen) is the one mounted.
		dev := "/dev/" + strings.TrimSpace(vm.Must(t, "grep -lx '"+ebs.Serial(v.ID)+"' /sys/block/nvme*n1/device/serial | cut -d/ -f4"))
		if mnt := strings.Fields(vm.Must(t, "findmnt -n -o SOURCE,FSTYPE /data/"+volumeName)); len(mnt) != 2 ||
			mnt[0] != dev || mnt[1] != "xfs" {
			t.Errorf("/data/%s mounted from %v; the volume's disk is %s", volumeName, mnt, dev)
		}
		journal := vm.Must(t, "journalctl -b -o cat -u chainwarden-volumes")
		mustContain(t, "chainwarden-volumes", journal, "created volume", "attaching volume", "block device present",
			"made a filesystem on the blank disk", "formatted=true")
		uuid = strings.TrimSpace(vm.Must(t, "blkid -o value -s UUID "+dev))
		mustContain(t, "fstab", vm.Must(t, "cat /etc/fstab"), "UUID="+uuid+" /data/"+volumeName+" xfs")
		mustContain(t, "nomad volume config", vm.Must(t, "cat /etc/nomad.d/chainwarden-volume-"+volumeName+".hcl"),
			`host_volume "`+volumeName+`"`)
		vm.Must(t, "echo written-on-boot-1 > /data/"+volumeName+"/marker && sync")
	})

	t.Run("consul joined the server through EC2 auto-join", func(t *testing.T) {
		testenv.Eventually(t, 3*time.Minute, "the instance alive in the server's member list", func() error {
			members, err := c.consul.Agent().Members(false)
			if err != nil {
				return err
			}
			for _, m := range members {
				if m.Name == instanceID {
					if m.Addr != instanceIP || m.Status != 1 {
						return fmt.Errorf("member %s at %s status %d", m.Name, m.Addr, m.Status)
					}
					return nil
				}
			}
			return fmt.Errorf("%s not among %d members", instanceID, len(members))
		})
		node, _, err := c.consul.Catalog().Node(instanceID, nil)
		if err != nil || node == nil || node.Node.Meta["chainwarden_roles"] != "node,proxy" || node.Node.Datacenter != datacenter {
			t.Errorf("catalog node: %+v %v", node, err)
		}
		if c.ec2.Calls("DescribeInstances") == 0 {
			t.Error("Consul joined without asking EC2 for the servers")
		}
	})

	t.Run("nomad client registered with the volume", func(t *testing.T) {
		var node *nomadapi.Node
		testenv.Eventually(t, 3*time.Minute, "the instance a ready Nomad node with docker", func() error {
			nodes, _, err := c.nomad.Nodes().List(nil)
			if err != nil {
				return err
			}
			for _, n := range nodes {
				if n.Name == instanceID {
					if node, _, err = c.nomad.Nodes().Info(n.ID, nil); err != nil {
						return err
					}
					if d := node.Drivers["docker"]; node.Status != "ready" || d == nil || !d.Healthy {
						return fmt.Errorf("node %s status %s, docker %+v", n.Name, node.Status, d)
					}
					return nil
				}
			}
			return fmt.Errorf("%s not among %d nodes", instanceID, len(nodes))
		})
		if hv := node.HostVolumes[volumeName]; hv == nil || hv.Path != "/data/"+volumeName || node.NodeClass != "node-proxy" ||
			node.Datacenter != datacenter {
			t.Errorf("node class %q, datacenter %q, host volumes %+v", node.NodeClass, node.Datacenter, node.HostVolumes)
		}
		t.Logf("nomad node attributes from IMDS: instance %q, zone %q", node.Attributes["unique.platform.aws.instance-id"],
			node.Attributes["platform.aws.placement.availability-zone"])
	})

	t.Run("the agent answers", func(t *testing.T) {
		out := vm.Must(t, "curl -fsS --max-time 10 http://127.0.0.1:9464/v1/health")
		var health []any
		if err := json.Unmarshal([]byte(out), &health); err != nil {
			t.Errorf("/v1/health: %v: %q", err, out)
		}
	})

	t.Run("consul-template rendered nginx, which routes to the chain node", func(t *testing.T) {
		testenv.Eventually(t, 3*time.Minute, "a JSON-RPC call through the instance's proxy", func() error {
			return rpcThrough(c.http, "http://"+instanceIP+":8545/geth-test")
		})
		for _, u := range []string{"consul-template@nginx.service", "chainwarden-nginx.service"} {
			if got := strings.TrimSpace(vm.Must(t, "systemctl is-active "+u+" || true")); got != "active" {
				t.Errorf("%s is %s", u, got)
			}
		}
	})
	c.powerOff(vm)

	// --- second boot: the same instance, now a node host only; its volume holds data ---
	tags["chainwarden-roles"] = "node"
	attaches := c.ec2.Calls("AttachVolume")
	vm = c.boot("boot-2", tags, userData)
	second := waitBooted(t, vm)

	t.Run("the volume was mounted, not formatted", func(t *testing.T) {
		journal := vm.Must(t, "journalctl -b -o cat -u chainwarden-volumes")
		mustContain(t, "chainwarden-volumes", journal, "disk has a filesystem: mounting it as it is", "formatted=false")
		if strings.Contains(journal, "made a filesystem") || strings.Contains(journal, "created volume") {
			t.Errorf("second boot made a volume or a filesystem:\n%s", journal)
		}
		if got := strings.TrimSpace(vm.Must(t, "cat /data/"+volumeName+"/marker")); got != "written-on-boot-1" {
			t.Errorf("marker = %q", got)
		}
		dev := strings.TrimSpace(vm.Must(t, "findmnt -n -o SOURCE /data/"+volumeName))
		if got := strings.TrimSpace(vm.Must(t, "blkid -o value -s UUID "+dev)); got != uuid || uuid == "" {
			t.Errorf("filesystem UUID %q, was %q", got, uuid)
		}
		if n := len(c.ec2.Volumes()); n != 1 || c.ec2.Calls("AttachVolume") != attaches {
			t.Errorf("%d volumes, %d attach calls (%d before)", n, c.ec2.Calls("AttachVolume"), attaches)
		}
	})

	t.Run("IMDSv2 only", func(t *testing.T) {
		if c.imds.Tokens() == 0 || c.imds.Refused() != 0 {
			t.Errorf("IMDS: %d session tokens, %d token-less (IMDSv1) requests refused", c.imds.Tokens(), c.imds.Refused())
		}
	})

	t.Run("a node host runs no proxy", func(t *testing.T) {
		if got := strings.Fields(vm.Must(t, "ls /etc/chainwarden/enabled")); strings.Join(got, " ") != "node" {
			t.Errorf("enabled = %v", got)
		}
		for _, u := range []string{"consul-template@nginx.service", "chainwarden-nginx.service"} {
			if got := strings.TrimSpace(vm.Must(t, "systemctl is-active "+u+" || true")); got == "active" {
				t.Errorf("%s is active on a node host", u)
			}
		}
		if err := rpcThrough(c.http, "http://"+instanceIP+":8545/geth-test"); err == nil {
			t.Error("the proxy answers on a node host")
		}
	})

	t.Run("rejoined the cluster", func(t *testing.T) {
		testenv.Eventually(t, 3*time.Minute, "the instance alive again, a ready Nomad node", func() error {
			node, _, err := c.consul.Catalog().Node(instanceID, nil)
			if err != nil || node == nil || node.Node.Meta["chainwarden_roles"] != "node" {
				return fmt.Errorf("catalog node %+v: %v", node, err)
			}
			nodes, _, err := c.nomad.Nodes().List(nil)
			if err != nil {
				return err
			}
			for _, n := range nodes {
				if n.Name == instanceID && n.Status == "ready" && n.NodeClass == "node" {
					return nil
				}
			}
			return fmt.Errorf("no ready nomad node %s of class node", instanceID)
		})
	})
	c.powerOff(vm)
	t.Logf("boot figures: first boot agent ready %s after power-on (guest uptime %s; %s); second boot %s (%s; %s)",
		first.AgentReady.Round(time.Second), first.GuestUptime.Round(time.Second), first.Analyze,
		second.AgentReady.Round(time.Second), second.GuestUptime.Round(time.Second), second.Analyze)
}

func tagOf(tags []ec2test.Tag, key string) string {
	for _, t := range tags {
		if t.Key == key {
			return t.Value
		}
	}
	return ""
}

var rpcResult = regexp.MustCompile(`"result"\s*:\s*"0x2a"`)

// rpcThrough makes a JSON-RPC call to url and wants the chain node's answer.
func rpcThrough(c *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url,
		strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !rpcResult.Match(b) {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return nil
}
