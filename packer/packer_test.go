// Tests of the node AMI: the Packer template (fmt, validate), the scripts (shellcheck), the units (ordering here,
// systemd-analyze verify in the provisioning test), the boot step against a fake IMDSv2, and the provisioning
// itself run in a chroot of a Debian 12 root filesystem made with debootstrap.
package packer_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// run runs bin with args and returns its combined output and error, without failing the test.
func run(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// shellScripts lists every shell script the image ships or runs.
func shellScripts(t *testing.T) []string {
	t.Helper()
	scripts, err := filepath.Glob("scripts/*.sh")
	if err != nil {
		t.Fatal(err)
	}
	scripts = append(scripts, bootstrapScript, "testdata/ami-base.sh")
	if len(scripts) < 5 {
		t.Fatalf("only %d scripts found: %v", len(scripts), scripts)
	}
	return scripts
}

func TestShellcheck(t *testing.T) {
	sc := testenv.Bin(t, "shellcheck")
	for _, s := range shellScripts(t) {
		if out, err := run(sc, "--severity=style", s); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
		info, err := os.Stat(s)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(s) != "lib.sh" && info.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
	}
}

// unit is a parsed systemd unit file: section -> key -> values (repeated keys accumulate, space-separated
// lists are split).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", path, line)
			}
			k = strings.TrimSpace(k)
			switch k {
			case "After", "Before", "Requires", "Wants", "WantedBy", "BindsTo":
				u[section][k] = append(u[section][k], strings.Fields(v)...)
			default:
				u[section][k] = append(u[section][k], strings.TrimSpace(v))
			}
		}
	}
	return u
}

func (u unit) get(section, key string) []string { return u[section][key] }

func (u unit) has(section, key, value string) bool {
	for _, v := range u[section][key] {
		if v == value {
			return true
		}
	}
	return false
}

// loadUnits parses the units the image installs, drop-ins under "NAME.d/FILE".
func loadUnits(t *testing.T) map[string]unit {
	t.Helper()
	units := map[string]unit{}
	files, _ := filepath.Glob("files/systemd/*.service")
	paths, _ := filepath.Glob("files/systemd/*.path")
	files = append(files, paths...)
	dropins, _ := filepath.Glob("files/systemd/*.service.d/*.conf")
	for _, f := range files {
		units[filepath.Base(f)] = parseUnit(t, f)
	}
	for _, f := range dropins {
		units[filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f)] = parseUnit(t, f)
	}
	return units
}

// orderedBefore reports whether systemd orders a before b, following After= and Before= of every unit
// (drop-ins included: they add to the unit they extend).
func orderedBefore(units map[string]unit, a, b string) bool {
	edges := map[string][]string{} // x -> units ordered after x
	name := func(key string) string {
		n, _, _ := strings.Cut(key, "/")
		return strings.TrimSuffix(n, ".d")
	}
	for key, u := range units {
		n := name(key)
		for _, x := range u.get("Unit", "After") {
			edges[x] = append(edges[x], n)
		}
		for _, x := range u.get("Unit", "Before") {
			edges[n] = append(edges[n], x)
		}
	}
	seen := map[string]bool{}
	queue := []string{a}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, y := range edges[x] {
			if y == b {
				return true
			}
			if !seen[y] {
				seen[y] = true
				queue = append(queue, y)
			}
		}
	}
	return false
}

func TestUnitOrdering(t *testing.T) {
	units := loadUnits(t)
	for _, want := range []string{"chainwarden-bootstrap.service", "consul.service", "nomad.service",
		"chainwarden-volumes.service", "chainwarden-agent.service", "consul-template@.service",
		"chainwarden-nginx.service", "chainwarden-nginx.path", "chainwarden-haproxy.service", "chainwarden-haproxy.path",
		"docker.service.d/chainwarden.conf"} {
		if units[want] == nil {
			t.Fatalf("unit %s missing; have %v", want, units)
		}
	}

	for _, o := range []struct{ first, then string }{
		{"chainwarden-volumes.service", "nomad.service"},
		{"consul.service", "chainwarden-agent.service"},
		{"chainwarden-bootstrap.service", "consul.service"},
		{"chainwarden-bootstrap.service", "chainwarden-volumes.service"},
		{"chainwarden-bootstrap.service", "nomad.service"},
		{"chainwarden-bootstrap.service", "chainwarden-agent.service"},
		{"chainwarden-bootstrap.service", "chainwarden-nginx.service"},
		{"chainwarden-bootstrap.service", "chainwarden-haproxy.service"},
		{"chainwarden-bootstrap.service", "consul-template@.service"},
		{"chainwarden-bootstrap.service", "docker.service"},
		{"consul.service", "consul-template@.service"},
		{"docker.service", "nomad.service"},
	} {
		if !orderedBefore(units, o.first, o.then) {
			t.Errorf("%s is not ordered before %s", o.first, o.then)
		}
		if orderedBefore(units, o.then, o.first) {
			t.Errorf("ordering cycle: %s is also ordered before %s", o.then, o.first)
		}
	}

	if got := strings.Join(units["consul.service"].get("Service", "ExecStartPre"), ""); got !=
		"-/usr/local/bin/chainwarden consul-forget -data-dir /opt/consul" {
		t.Errorf("consul.service ExecStartPre = %q, want the agent's registrations forgotten before consul starts", got)
	}

	vol := units["chainwarden-volumes.service"]
	if got := vol.get("Service", "Type"); len(got) != 1 || got[0] != "oneshot" {
		t.Errorf("chainwarden-volumes Type = %v, want oneshot", got)
	}
	if got := strings.Join(vol.get("Service", "ExecStart"), ""); got !=
		"/usr/local/bin/chainwarden volume ensure -config /etc/chainwarden/agent.hcl -nomad-config-dir /etc/nomad.d" {
		t.Errorf("chainwarden-volumes ExecStart = %q", got)
	}
	// Nomad must not run at all when the volumes step failed: the chain data would land on the root disk.
	if !units["nomad.service"].has("Unit", "Requires", "chainwarden-volumes.service") {
		t.Error("nomad.service does not require chainwarden-volumes.service")
	}
	agent := units["chainwarden-agent.service"]
	if got := strings.Join(agent.get("Service", "ExecStart"), ""); got != "/usr/local/bin/chainwarden agent -config /etc/chainwarden/agent.hcl" {
		t.Errorf("chainwarden-agent ExecStart = %q", got)
	}
	if !agent.has("Unit", "Wants", "consul.service") {
		t.Error("chainwarden-agent.service does not want consul.service")
	}

	// Services run as their own users where the software allows it.
	for name, user := range map[string]string{"consul.service": "consul", "chainwarden-agent.service": "chainwarden"} {
		if got := units[name].get("Service", "User"); len(got) != 1 || got[0] != user {
			t.Errorf("%s User = %v, want %s", name, got, user)
		}
	}
	// Every unit and drop-in is switched by the host's role, except the ones every host runs.
	for key, u := range units {
		cond := strings.Join(u.get("Unit", "ConditionPathExists"), " ")
		switch {
		case key == "chainwarden-bootstrap.service", key == "consul.service", key == "chainwarden-agent.service":
			continue
		case strings.HasSuffix(key, ".path"):
			// A path unit carries its service's role condition, checked once the boot step has written the
			// markers: a path unit whose service is skipped by its condition retriggers it until systemd fails
			// the path unit (trigger-limit-hit), as booting the image showed on a host that was a proxy before.
			got := u.get("Path", "Unit")
			if len(got) != 1 || units[got[0]] == nil {
				t.Errorf("%s starts %v, not a unit of the image", key, got)
				continue
			}
			want := units[got[0]].get("Unit", "ConditionPathExists")
			if len(want) == 0 || !strings.Contains(cond, want[0]) {
				t.Errorf("%s has condition %q, not its service's %v", key, cond, want)
			}
			if !u.has("Unit", "After", "chainwarden-bootstrap.service") || !u.has("Unit", "DefaultDependencies", "no") {
				t.Errorf("%s is not ordered after the boot step (with DefaultDependencies=no: paths.target comes first)", key)
			}
			continue
		}
		if !strings.Contains(cond, "/etc/chainwarden/enabled/") {
			t.Errorf("%s has no role condition (ConditionPathExists=/etc/chainwarden/enabled/...): %q", key, cond)
		}
	}
}

// packerEnv keeps Packer offline and out of the user's config: no checkpoint calls, no plugins but the bundled ones.
func packerEnv(t *testing.T) []string {
	dir := t.TempDir()
	return append(os.Environ(), "CHECKPOINT_DISABLE=1", "PACKER_PLUGIN_PATH="+filepath.Join(dir, "plugins"),
		"PACKER_CONFIG_DIR="+filepath.Join(dir, "config"), "PACKER_CACHE_DIR="+filepath.Join(dir, "cache"))
}

func runPacker(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.Bin(t, "packer"), args...)
	cmd.Dir = dir
	cmd.Env = packerEnv(t)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestPackerFmt(t *testing.T) {
	if out, err := runPacker(t, ".", "fmt", "-check", "-diff", "."); err != nil {
		t.Errorf("packer fmt -check: %v\n%s", err, out)
	}
}

// newerThanBundled are the source attributes the template sets that the amazon plugin bundled in Packer 1.9.4
// (v1.2.1) predates; plugins.pkr.hcl requires a plugin that has them. The offline full validate leaves them out;
// `validate -syntax-only` and a real build cover them.
var newerThanBundled = []string{"imds_support"}

// validateTree copies the template beside a stand-in repository layout (bin/chainwarden, consul-templates/) and
// leaves out plugins.pkr.hcl, whose required_plugins Packer 1.9.4 cannot satisfy offline, and the attributes in
// newerThanBundled (docs/PACKER.md).
func validateTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "packer"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"scripts", "files", "variables.pkr.hcl"} {
		if out, err := exec.Command("cp", "-R", src, filepath.Join(root, "packer", src)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v\n%s", src, err, out)
		}
	}
	node := readFile(t, "node.pkr.hcl")
	for _, attr := range newerThanBundled {
		re := regexp.MustCompile(`(?m)^\s*` + attr + `\s*=.*\n`)
		if !re.MatchString(node) {
			t.Fatalf("node.pkr.hcl no longer sets %s: drop it from newerThanBundled", attr)
		}
		node = re.ReplaceAllString(node, "")
	}
	if err := os.WriteFile(filepath.Join(root, "packer", "node.pkr.hcl"), []byte(node), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("../consul-templates"); err == nil {
		if out, err := exec.Command("cp", "-R", "../consul-templates", root).CombinedOutput(); err != nil {
			t.Fatalf("cp consul-templates: %v\n%s", err, out)
		}
	} else if err := os.MkdirAll(filepath.Join(root, "consul-templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	// validate checks that uploaded files exist, not what they are.
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	for _, name := range []string{"chainwarden", "consul"} {
		if err := os.WriteFile(filepath.Join(root, "bin", name), []byte("stand-in"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(root, "packer")
}

func TestPackerValidate(t *testing.T) {
	// The whole directory, required_plugins included: syntax and HCL only, no plugin needed.
	if out, err := runPacker(t, ".", "validate", "-syntax-only", "."); err != nil {
		t.Errorf("packer validate -syntax-only: %v\n%s", err, out)
	}

	dir := validateTree(t)
	for _, vars := range [][]string{
		nil,
		{"-var", "base=ubuntu-24.04", "-var", "architecture=arm64"},
		{"-var", "base=ubuntu-22.04", "-var", "source_ami=ami-0123456789abcdef0", "-var", "docker_source=distro"},
		{"-var", `prebuilt_binaries=["../bin/consul"]`, "-var", "chainwarden_binary=../bin/chainwarden"},
	} {
		args := append(append([]string{"validate"}, vars...), ".")
		if out, err := runPacker(t, dir, args...); err != nil {
			t.Errorf("packer %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// Full validation is real: bad values are refused with the template's own messages.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-var", "base=centos-7"}, "The base must be debian-12, ubuntu-22.04 or ubuntu-24.04."},
		{[]string{"-var", "architecture=riscv"}, "The architecture must be amd64 or arm64."},
		{[]string{"-var", "docker_source=snap"}, "The docker_source must be docker or distro."},
		{[]string{"-var", `prebuilt_binaries=["/usr/bin/geth"]`}, "Each prebuilt binary must be a file named consul, nomad or consul-template."},
		{[]string{"-var", "chainwarden_binary=/tmp/cw-linux-amd64"}, "The chainwarden_binary must be a file named chainwarden."},
		{[]string{"-var", "chainwarden_binary=/nonexistent/chainwarden"}, "/nonexistent/chainwarden"},
	} {
		args := append(append([]string{"validate"}, tc.args...), ".")
		out, err := runPacker(t, dir, args...)
		if err == nil {
			t.Errorf("packer %s passed", strings.Join(args, " "))
			continue
		}
		if !strings.Contains(strings.Join(strings.Fields(out), " "), tc.want) {
			t.Errorf("packer %s: output lacks %q:\n%s", strings.Join(args, " "), tc.want, out)
		}
	}
}

// TestPackerValidateWithPlugin validates the whole directory, required_plugins and imds_support included, the
// way Packer >= 1.10 sees it after `packer init`: Packer 1.9.4 with the amazon plugin v1.2.9 installed in its
// plugin directory (built from the Go module proxy; GitHub, where `packer init` downloads it from, is unreachable
// here). `make deps` builds the plugin into the deps cache.
func TestPackerValidateWithPlugin(t *testing.T) {
	plugin := testenv.Bin(t, "packer-plugin-amazon")
	out, err := run(plugin, "describe")
	if err != nil {
		t.Fatalf("%s describe: %v\n%s", plugin, err, out)
	}
	var desc struct {
		Version    string `json:"version"`
		APIVersion string `json:"api_version"`
	}
	if err := json.Unmarshal([]byte(out), &desc); err != nil {
		t.Fatalf("%s describe: %v\n%s", plugin, err, out)
	}
	// Packer's plugin layout: PACKER_PLUGIN_PATH/github.com/hashicorp/amazon/packer-plugin-amazon_vV_API_OS_ARCH
	// beside a _SHA256SUM file.
	plugins := t.TempDir()
	name := fmt.Sprintf("packer-plugin-amazon_v%s_%s_%s_%s", strings.TrimPrefix(desc.Version, "v"), desc.APIVersion,
		runtime.GOOS, runtime.GOARCH)
	dst := filepath.Join(plugins, "github.com", "hashicorp", "amazon", name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(plugin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+"_SHA256SUM", []byte(hex.EncodeToString(sum[:])), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := validateTree(t)
	for _, f := range []string{"node.pkr.hcl", "plugins.pkr.hcl"} { // this time the files as they are
		if out, err := exec.Command("cp", f, filepath.Join(dir, f)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v\n%s", f, err, out)
		}
	}
	packer := testenv.Bin(t, "packer")
	env := append(packerEnv(t), "PACKER_PLUGIN_PATH="+plugins)
	validate := func() ([]byte, error) {
		cmd := exec.Command(packer, "validate", ".")
		cmd.Dir = dir
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	got, err := validate()
	if err != nil {
		t.Fatalf("packer validate with the amazon plugin %s: %v\n%s", desc.Version, err, got)
	}
	if strings.Contains(string(got), "Bundled plugins used") {
		t.Errorf("validate used the bundled plugin, not the installed one:\n%s", got)
	}
	// And the plugin checks imds_support's value.
	b, _ = os.ReadFile(filepath.Join(dir, "node.pkr.hcl"))
	bad := strings.Replace(string(b), `imds_support = "v2.0"`, `imds_support = "v1.0"`, 1)
	if bad == string(b) {
		t.Fatal(`node.pkr.hcl does not set imds_support = "v2.0"`)
	}
	os.WriteFile(filepath.Join(dir, "node.pkr.hcl"), []byte(bad), 0o644)
	if got, err := validate(); err == nil || !strings.Contains(string(got), "imds_support") {
		t.Errorf("imds_support = v1.0 not rejected: %v\n%s", err, got)
	}
}
