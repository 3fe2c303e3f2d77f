package packer_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

const chainwardenTestVersion = "test-provision"

// debianMirror is the Debian mirror apt already uses on this machine.
func debianMirror() string {
	uri := regexp.MustCompile(`(?m)^URIs:\s*(\S+)`)
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, stanza := range strings.Split(string(b), "\n\n") {
			if strings.Contains(stanza, "bookworm") && !strings.Contains(stanza, "security") {
				if m := uri.FindStringSubmatch(stanza); m != nil && strings.Contains(m[1], "debian") {
					return m[1]
				}
			}
		}
	}
	deb := regexp.MustCompile(`(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s`)
	list := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append(list, more...) {
		b, _ := os.ReadFile(f)
		if m := deb.FindSubmatch(b); m != nil {
			return string(m[1])
		}
	}
	return "http://deb.debian.org/debian"
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p, err := strconv.Unquote(`"` + strings.ReplaceAll(fields[4], `"`, `\"`) + `"`) // octal escapes
		if err != nil {
			p = fields[4]
		}
		if p == dir || strings.HasPrefix(p, dir+"/") {
			mounts = append(mounts, p)
		}
	}
	for i, j := 0, len(mounts)-1; i < j; i, j = i+1, j-1 {
		mounts[i], mounts[j] = mounts[j], mounts[i]
	}
	return mounts
}

// killChrooted kills the processes whose root is dir: anything the provisioning left running in the chroot.
func killChrooted(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err == nil && (root == dir || strings.HasPrefix(root, dir+"/")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountRootfs kills what runs in the tree and unmounts everything below dir; false (and the test marked failed)
// when something stays mounted.
func unmountRootfs(t testing.TB, dir string) bool {
	killChrooted(dir)
	for _, m := range mountsUnder(dir) {
		if err := syscall.Unmount(m, 0); err != nil {
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		t.Errorf("%s: still mounted: %v", dir, left)
		return false
	}
	return true
}

// removeRootfs unmounts everything below dir and removes it. It never removes a tree that still has a mount in
// it (a bind-mounted /dev would take the host's devices with it).
func removeRootfs(t testing.TB, dir string) {
	if !unmountRootfs(t, dir) {
		t.Errorf("not removing %s", dir)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Errorf("remove %s: %v", dir, err)
	}
}

// baseRootfs returns a tarball of a minimal Debian 12 (debootstrap --variant=minbase, plus systemd as on the
// official AMI), made once and cached outside the repository: the base image, not the result of the scripts.
func baseRootfs(t *testing.T) string {
	t.Helper()
	debootstrap := testenv.Bin(t, "debootstrap")
	cache := filepath.Join(filepath.Dir(testenv.CacheBin()), "rootfs")
	tarball := filepath.Join(cache, "debian-12-minbase-systemd.tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(cache, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer removeRootfs(t, dir)
	mirror := debianMirror()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--include=systemd-sysv",
		"bookworm", dir, mirror).CombinedOutput()
	if err != nil {
		t.Fatalf("debootstrap bookworm from %s: %v\n%s", mirror, err, tail(string(out), 30))
	}
	tmp := tarball + ".tmp"
	if out, err := exec.Command("tar", "-C", dir, "--numeric-owner", "-cf", tmp, ".").CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Fatalf("tar the rootfs: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrapped Debian 12 from %s in %s, cached as %s", mirror, time.Since(start).Round(time.Second), tarball)
	return tarball
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// chroot is a Debian 12 root filesystem the test owns, with /proc and /dev/pts mounted while the test runs.
type chroot struct {
	t   *testing.T
	dir string
}

func newChroot(t *testing.T) *chroot {
	t.Helper()
	tarball := baseRootfs(t)
	dir, err := os.MkdirTemp("", "chainwarden-rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRootfs(t, dir) })
	if out, err := exec.Command("tar", "-C", dir, "--numeric-owner", "-xpf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v\n%s", tarball, err, out)
	}
	// "/" of the image must be enterable by its users (MkdirTemp, and so the tarball's "./", are 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Name resolution for apt inside, as the build instance has it.
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		os.Remove(filepath.Join(dir, "etc/resolv.conf"))
		err = os.WriteFile(filepath.Join(dir, "etc/resolv.conf"), resolv, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("proc", filepath.Join(dir, "proc"), "proc", 0, ""); err != nil {
		t.Fatalf("mount proc: %v", err)
	}
	pts := filepath.Join(dir, "dev/pts")
	os.MkdirAll(pts, 0o755)
	if err := syscall.Mount("devpts", pts, "devpts", 0, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		t.Fatalf("mount devpts: %v", err)
	}
	return &chroot{t: t, dir: dir}
}

func (c *chroot) path(p string) string { return filepath.Join(c.dir, p) }

// run runs a command inside the chroot with a clean environment plus env, as root or as userspec.
func (c *chroot) run(ctx context.Context, userspec string, env []string, args ...string) (string, error) {
	cargs := []string{}
	if userspec != "" {
		cargs = append(cargs, "--userspec="+userspec)
	}
	cargs = append(cargs, c.dir, "/usr/bin/env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")
	cargs = append(cargs, env...)
	cargs = append(cargs, args...)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "chroot", cargs...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// must runs a command in the chroot as root and fails the test when it fails.
func (c *chroot) must(args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := c.run(ctx, "", nil, args...)
	if err != nil {
		c.t.Fatalf("in the chroot: %s: %v\n%s", strings.Join(args, " "), err, tail(out, 40))
	}
	return out
}

// copyInto copies src (a file or directory) to dst inside the chroot.
func (c *chroot) copyInto(src, dst string) {
	c.t.Helper()
	target := c.path(dst)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-RL", src, target).CombinedOutput(); err != nil {
		c.t.Fatalf("cp %s %s: %v\n%s", src, target, err, out)
	}
}

// uploadDir is where Packer's file provisioners put the build machine's uploads (provision.sh's UPLOAD_DIR).
const uploadDir = "/tmp/chainwarden-upload"

// provisioningBinaries are the prebuilt binaries the build machine uploads: the Go-built consul, nomad and
// consul-template from the deps cache, and chainwarden built from this tree reporting version (without VCS
// stamping, so the same source gives the same binary).
func provisioningBinaries(t *testing.T, version string) map[string]string {
	t.Helper()
	bins := map[string]string{}
	for _, name := range []string{"consul", "nomad", "consul-template"} {
		bins[name] = testenv.Bin(t, name)
	}
	bins["chainwarden"] = testenv.GoBuild(t, "./cmd/chainwarden", "-buildvcs=false", "-ldflags", "-X main.version="+version)
	return bins
}

// provision does what the template's build does on the build instance: the file provisioners upload the binaries,
// scripts/, files/ and the repository's consul-templates/, then the shell provisioner runs scripts/provision.sh as
// root, here with Debian's docker.io (Docker's repository is not reachable). It fails the test when a step fails
// or did not run, and returns provision.sh's output.
func provision(t *testing.T, c *chroot, bins map[string]string, version string) string {
	t.Helper()
	for name, p := range bins {
		c.copyInto(p, uploadDir+"/bin/"+name)
	}
	c.copyInto("scripts", uploadDir+"/scripts")
	c.copyInto("files", uploadDir+"/files")
	if _, err := os.Stat("../consul-templates"); err == nil {
		c.copyInto("../consul-templates", uploadDir+"/consul-templates")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := c.run(ctx, "", []string{"DOCKER_SOURCE=distro", "CHAINWARDEN_VERSION=" + version},
		"bash", uploadDir+"/scripts/provision.sh")
	if err != nil {
		t.Fatalf("provision.sh: %v\n%s", err, tail(out, 60))
	}
	t.Logf("provisioned in %s", time.Since(start).Round(time.Second))
	for _, step := range []string{"base", "docker", "hashicorp", "proxy", "chainwarden", "configure", "harden", "cleanup"} {
		if !strings.Contains(out, "provision[main]: step "+step) {
			t.Errorf("step %s did not run:\n%s", step, tail(out, 40))
		}
	}
	for _, name := range []string{"consul", "nomad", "consul-template"} {
		if !strings.Contains(out, "provision[hashicorp]: "+name+": prebuilt binary uploaded from the build machine") {
			t.Errorf("%s was not installed from the uploaded binary", name)
		}
	}
	return out
}

// TestProvisionDebian12 runs the image's provisioning for real: the scripts Packer runs on the build instance run
// here as root in a chroot of a debootstrapped Debian 12, with Debian's packages (docker.io, nginx, HAProxy) from
// the Debian mirror and the Go-built consul, nomad, consul-template and chainwarden as the "prebuilt binaries
// uploaded from the build machine". Then it checks the image: binaries, units, users, the boot step and the
// configs it writes, validated by the real tools inside the chroot.
func TestProvisionDebian12(t *testing.T) {
	if testing.Short() {
		t.Skip("provisions a Debian root filesystem (minutes)")
	}
	testenv.RequireRoot(t)
	testenv.Bin(t, "chroot")
	systemdAnalyze := testenv.Bin(t, "systemd-analyze")
	systemctl := testenv.Bin(t, "systemctl")
	bins := provisioningBinaries(t, chainwardenTestVersion)

	c := newChroot(t)
	const upload = uploadDir

	// What a build instance has and the image must not keep: the build's SSH key, the instance's host keys.
	for p, content := range map[string]string{
		"/root/.ssh/authorized_keys":        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPackerTemporaryKey packer_temporary\n",
		"/etc/ssh/ssh_host_ed25519_key":     "-----BEGIN OPENSSH PRIVATE KEY-----\nbuild instance host key\n",
		"/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildHostKey root@build\n",
	} {
		os.MkdirAll(filepath.Dir(c.path(p)), 0o700)
		if err := os.WriteFile(c.path(p), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	provision(t, c, bins, chainwardenTestVersion)

	t.Run("binaries", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"consul", "version"}, "Consul v1.19.2"},
			{[]string{"nomad", "version"}, "Nomad v1.10.5"},
			{[]string{"consul-template", "-version"}, "v0.41.1"},
			{[]string{"chainwarden", "version"}, "chainwarden " + chainwardenTestVersion},
			{[]string{"dockerd", "--version"}, "Docker version"},
			{[]string{"nginx", "-v"}, "nginx version"},
			{[]string{"haproxy", "-v"}, "HAProxy version"},
			{[]string{"mkfs.xfs", "-V"}, "mkfs.xfs version"},
			{[]string{"curl", "--version"}, "curl"},
		} {
			if got := c.must(tc.args...); !strings.Contains(got, tc.want) {
				t.Errorf("%s: %q lacks %q", strings.Join(tc.args, " "), got, tc.want)
			}
		}
		// Nomad's dynamic host volume plugin answers a fingerprint as Nomad calls it (only DHV_* in the environment).
		if got := c.must("/usr/bin/env", "-i", "DHV_OPERATION=fingerprint", "/opt/nomad/host_volume_plugins/chainwarden-ebs",
			"fingerprint"); !strings.Contains(got, `"version"`) {
			t.Errorf("chainwarden-ebs fingerprint: %q", got)
		}
		for _, name := range []string{"consul", "nomad", "consul-template", "chainwarden"} {
			info, err := os.Stat(c.path("/usr/local/bin/" + name))
			if err != nil || info.Mode().Perm() != 0o755 {
				t.Errorf("/usr/local/bin/%s: %v %v", name, info, err)
			}
		}
	})

	units := []string{"chainwarden-bootstrap.service", "consul.service", "nomad.service", "chainwarden-volumes.service",
		"chainwarden-agent.service", "consul-template@nginx.service", "consul-template@haproxy.service",
		"docker.service", "chainwarden-nginx.path", "chainwarden-haproxy.path"}
	verify := append([]string{"chainwarden-nginx.service", "chainwarden-haproxy.service"}, units...)

	t.Run("units installed and enabled", func(t *testing.T) {
		files, _ := filepath.Glob("files/systemd/*.service")
		paths, _ := filepath.Glob("files/systemd/*.path")
		dropins, _ := filepath.Glob("files/systemd/*.service.d/*.conf")
		for _, f := range append(append(files, paths...), dropins...) {
			rel, _ := filepath.Rel("files/systemd", f)
			got, err := os.ReadFile(c.path("/etc/systemd/system/" + rel))
			if err != nil {
				t.Errorf("%s not installed: %v", rel, err)
				continue
			}
			if want, _ := os.ReadFile(f); !bytes.Equal(got, want) {
				t.Errorf("installed %s differs from packer/%s", rel, f)
			}
		}
		for _, u := range units {
			out, err := run(systemctl, "--root="+c.dir, "is-enabled", u)
			if err != nil || strings.TrimSpace(out) != "enabled" {
				t.Errorf("systemctl --root is-enabled %s = %q (%v)", u, strings.TrimSpace(out), err)
			}
		}
		// The packages' own proxies would serve their stock configs: off.
		for _, u := range []string{"nginx.service", "haproxy.service"} {
			if out, _ := run(systemctl, "--root="+c.dir, "is-enabled", u); strings.TrimSpace(out) != "disabled" {
				t.Errorf("systemctl --root is-enabled %s = %q, want disabled", u, strings.TrimSpace(out))
			}
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		// --root resolves every path (ExecStart binaries, drop-ins, dependencies) inside the provisioned image.
		args := append([]string{"verify", "--root=" + c.dir}, verify...)
		out, err := run(systemdAnalyze, args...)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})

	t.Run("users and permissions", func(t *testing.T) {
		passwd := readFile(t, c.path("/etc/passwd"))
		for _, user := range []string{"consul", "chainwarden"} {
			re := regexp.MustCompile(`(?m)^` + user + `:[^:]*:[0-9]+:[0-9]+:[^:]*:[^:]*:/usr/sbin/nologin$`)
			if !re.MatchString(passwd) {
				t.Errorf("no locked system user %s in /etc/passwd", user)
			}
		}
		for p, mode := range map[string]os.FileMode{"/etc/consul.d": 0o750, "/opt/consul": 0o750, "/opt/nomad": 0o700,
			"/etc/chainwarden": 0o750, "/etc/consul.d/consul.hcl": 0o640, "/usr/local/sbin/chainwarden-bootstrap": 0o755} {
			info, err := os.Stat(c.path(p))
			if err != nil {
				t.Errorf("%s: %v", p, err)
			} else if info.Mode().Perm() != mode {
				t.Errorf("%s mode %v, want %v", p, info.Mode().Perm(), mode)
			}
		}
	})

	t.Run("nothing host-specific or secret baked", func(t *testing.T) {
		if b, err := os.ReadFile(c.path("/etc/machine-id")); err != nil || len(b) != 0 {
			t.Errorf("/etc/machine-id = %q, %v; want empty (a new one per instance)", b, err)
		}
		for _, p := range []string{upload, "/usr/sbin/policy-rc.d", "/root/.ssh/authorized_keys", "/etc/consul.d/host.hcl", "/etc/nomad.d/host.hcl",
			"/etc/chainwarden/agent.hcl", "/etc/chainwarden/enabled/node"} {
			if _, err := os.Stat(c.path(p)); err == nil {
				t.Errorf("%s is in the image", p)
			}
		}
		keys, _ := filepath.Glob(c.path("/etc/ssh/ssh_host_*"))
		state, _ := os.ReadDir(c.path("/opt/consul"))
		if len(keys) > 0 || len(state) > 0 {
			t.Errorf("ssh host keys %v, consul state %v in the image", keys, state)
		}
		if nomad, _ := os.ReadDir(c.path("/opt/nomad")); len(nomad) != 1 || nomad[0].Name() != "host_volume_plugins" {
			t.Errorf("/opt/nomad holds %v, want only host_volume_plugins", nomad)
		}
		if proxies, _ := os.ReadDir(c.path("/etc/chainwarden/proxy")); len(proxies) != 2 || proxies[0].Name() != "haproxy" || proxies[1].Name() != "nginx" {
			var names []string
			for _, e := range proxies {
				names = append(names, e.Name())
			}
			t.Errorf("/etc/chainwarden/proxy holds %v, want only haproxy and nginx (no tests, no test data)", names)
		}
		if lists, _ := os.ReadDir(c.path("/var/lib/apt/lists")); len(lists) > 1 {
			t.Errorf("apt lists left in the image: %d entries", len(lists))
		}
		for _, p := range []string{"/etc/consul.d", "/etc/nomad.d", "/etc/chainwarden"} {
			out, _ := exec.Command("grep", "-rniE", `^[^#]*(encrypt|token|secret)[a-z_]* *=`, c.path(p)).CombinedOutput()
			if len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("secret-looking settings in %s:\n%s", p, out)
			}
		}
	})

	t.Run("boot step and configs", func(t *testing.T) {
		f := newFakeIMDS(t)
		f.tags = map[string]string{
			"chainwarden-datacenter": "euw1",
			"chainwarden-roles":      "node,proxy",
			"chainwarden-proxy":      "nginx",
			"chainwarden-volumes":    "geth-mainnet=ethereum/mainnet/geth/1500",
		}
		url := f.start(t)
		// The chroot shares this machine's network: the script inside reaches the fake on loopback.
		out := c.must("/usr/local/sbin/chainwarden-bootstrap", "--imds", url)
		if tokens, rejected := f.stats(); tokens == 0 || rejected != 0 {
			t.Errorf("IMDSv2 from the chroot: %d tokens, %d refused requests\n%s", tokens, rejected, out)
		}
		for p, group := range map[string]string{"/etc/consul.d/host.hcl": "consul", "/etc/chainwarden/agent.hcl": "chainwarden"} {
			if got := strings.TrimSpace(c.must("stat", "-c", "%G %a", p)); got != group+" 640" {
				t.Errorf("%s: owner group and mode %q, want %s 640", p, got, group)
			}
		}
		if got := strings.Join(enabledMarkers(t, c.dir), " "); got != "node proxy proxy-nginx" {
			t.Errorf("enabled = %q", got)
		}

		if got := c.must("consul", "validate", "/etc/consul.d"); !strings.Contains(got, "Configuration is valid") {
			t.Errorf("consul validate: %s", got)
		}
		cfg, err := config.Load(c.path("/etc/chainwarden/agent.hcl"))
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Volumes) != 1 || cfg.Volumes[0].SizeGiB != 1500 || cfg.Nomad == nil {
			t.Errorf("agent config: volumes %+v, nomad %+v", cfg.Volumes, cfg.Nomad)
		}
		// What `chainwarden volume ensure` writes for each volume (its own code), so the client config Nomad
		// starts with on a node host is validated whole.
		for _, v := range cfg.Volumes {
			p := c.path("/etc/nomad.d/chainwarden-volume-" + v.Name + ".hcl")
			if err := os.WriteFile(p, []byte(ebs.NomadHostVolume(v)), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		c.must("nomad", "config", "validate", "/etc/nomad.d")
		c.must("nginx", "-t")
		c.must("haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg")
		// The proxies' own configs, as their units start them, with an empty first render: the modules they load
		// (njs, Lua with cjson) are in the image.
		if _, err := os.Stat("../consul-templates/nginx/nginx.conf"); err == nil {
			c.must("sh", "-c", "set -e; d=$(mktemp -d); cp -R /etc/chainwarden/proxy/nginx/. $d; : > $d/rpc-proxy.conf; "+
				"nginx -t -p /var/lib/chainwarden/nginx/ -c $d/nginx.conf; rm -rf $d")
			c.must("sh", "-c", "set -e; d=$(mktemp -d); cp -R /etc/chainwarden/proxy/haproxy/. $d; cd $d; "+
				"printf 'frontend probe\\n    bind 127.0.0.1:1\\n' > rpc-proxy.cfg; haproxy -c -f haproxy.cfg -f rpc-proxy.cfg; rm -rf $d")
		} else {
			t.Log("no consul-templates/ in this tree: the proxies' own configs are not checked")
		}

		// The agent reads its config as its own user.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		got, err := c.run(ctx, "chainwarden:chainwarden", nil, "chainwarden", "agent", "-config-check", "-config", "/etc/chainwarden/agent.hcl")
		if err != nil || !strings.Contains(got, "1 volumes") {
			t.Errorf("chainwarden agent -config-check as chainwarden: %v\n%s", err, got)
		}
		// The units' command lines are ones the binary accepts: the flags parse up to -h (an unknown flag would
		// stop the parse first, as it would stop the unit at boot).
		for _, u := range []string{"chainwarden-volumes.service", "chainwarden-agent.service"} {
			cmdline := parseUnit(t, c.path("/etc/systemd/system/"+u)).get("Service", "ExecStart")
			if len(cmdline) != 1 {
				t.Fatalf("%s ExecStart = %v", u, cmdline)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			out, _ := c.run(ctx, "", nil, append(strings.Fields(cmdline[0]), "-h")...)
			cancel()
			if strings.Contains(out, "not defined") || !strings.Contains(out, "-config") {
				t.Errorf("%s: the binary refuses its command line %q:\n%s", u, cmdline[0], out)
			}
		}
		// The units now pass systemd's checks with the host's files in place too.
		args := append([]string{"verify", "--root=" + c.dir}, verify...)
		if out, err := run(systemdAnalyze, args...); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify after the boot step: %v\n%s", err, out)
		}
	})

	// After the boot step: this host has the proxy role with nginx.
	for _, flavor := range []string{"nginx", "haproxy"} {
		t.Run("proxy host serves RPC with "+flavor, func(t *testing.T) { proxyHostServesRPC(t, c, flavor) })
	}
}

// proxyHostServesRPC plays a proxy host of the image: consul-template renders from a real Consul with the configs
// and working directory of consul-template@FLAVOR.service, then the proxy runs with chainwarden-FLAVOR.service's
// own command lines (read from the installed unit), and a JSON-RPC call through it reaches a node registered in
// Consul as passing.
func proxyHostServesRPC(t *testing.T, c *chroot, flavor string) {
	if _, err := os.Stat("../consul-templates/" + flavor + "/consul-template.hcl"); err != nil {
		t.Fatalf("consul-templates/%s is missing: %v", flavor, err)
	}
	consul := testenv.StartConsul(t)
	node := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":"0x2a"}`)
	}))
	t.Cleanup(node.Close)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(node.URL, "http://"))
	p, _ := strconv.Atoi(port)
	reg := &consulapi.AgentServiceRegistration{ID: "geth-a", Name: "geth-test", Tags: []string{"chainwarden"},
		Address: host, Port: p, Check: &consulapi.AgentServiceCheck{CheckID: "geth-a-health", TTL: "1m", Status: "passing"}}
	if err := consul.Client.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}

	// inDir runs a unit's command line the way systemd would: in its WorkingDirectory, if it has one.
	inDir := func(u unit, instance, line string) []string {
		wd := "/"
		if d := u.get("Service", "WorkingDirectory"); len(d) == 1 {
			wd = strings.ReplaceAll(d[0], "%i", instance)
		}
		return append([]string{"sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", wd}, strings.Fields(line)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ct := parseUnit(t, c.path("/etc/systemd/system/consul-template@.service"))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := append(inDir(ct, flavor, ct.get("Service", "ExecStart")[0]), "-consul-addr", consul.Addr, "-once")
	out, err := c.run(ctx, "", []string{"CHAINWARDEN_PROXY_LISTEN=" + listen}, cmd...)
	if err != nil {
		t.Fatalf("consul-template as consul-template@%s runs it: %v\n%s", flavor, err, out)
	}
	// chainwarden-FLAVOR.path starts the proxy once this file is in place (apply.sh moved it there).
	pathUnit := parseUnit(t, c.path("/etc/systemd/system/chainwarden-"+flavor+".path"))
	if _, err := os.Stat(c.path(pathUnit.get("Path", "PathExists")[0])); err != nil {
		t.Fatalf("the render is not where chainwarden-%s.path waits for it: %v\n%s", flavor, err, out)
	}

	svc := parseUnit(t, c.path("/etc/systemd/system/chainwarden-"+flavor+".service"))
	for _, line := range svc.get("Service", "ExecStartPre") {
		if got, err := c.run(ctx, "", nil, inDir(svc, flavor, line)...); err != nil {
			t.Fatalf("chainwarden-%s: %s: %v\n%s", flavor, line, err, got)
		}
	}
	start := inDir(svc, flavor, svc.get("Service", "ExecStart")[0])
	if typ := svc.get("Service", "Type"); len(typ) == 1 && typ[0] == "forking" {
		if got, err := c.run(ctx, "", nil, start...); err != nil { // daemonizes; killed with the chroot
			t.Fatalf("chainwarden-%s: %v\n%s", flavor, err, got)
		}
	} else {
		args := append([]string{c.dir, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, start...)
		testenv.Start(t, "chainwarden-"+flavor, "chroot", args...)
	}
	testenv.Eventually(t, 30*time.Second, "rpc through "+flavor, func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+listen+"/geth-test",
			strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"0x2a"`) {
			return fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return nil
	})
}
