package packer_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

const bootstrapScript = "files/sbin/chainwarden-bootstrap"

// runBootstrap runs the boot step on this machine against the fake IMDS, writing under root.
func runBootstrap(t *testing.T, imdsURL, root string, env ...string) (string, error) {
	t.Helper()
	testenv.Bin(t, "curl")
	script, err := filepath.Abs(bootstrapScript)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command("bash", script, "--root", root)
	if imdsURL != "" {
		cmd.Args = append(cmd.Args, "--imds", imdsURL)
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func enabledMarkers(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "etc/chainwarden/enabled"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func mustContain(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

func strp(s string) *string { return &s }

func TestBootstrapFromTags(t *testing.T) {
	f := newFakeIMDS(t)
	f.tags = map[string]string{
		"Name":                       "geth-a",
		"chainwarden-datacenter":     "use1",
		"chainwarden-roles":          "node",
		"chainwarden-join-tag-key":   "consul-cluster",
		"chainwarden-join-tag-value": "prod",
		"chainwarden-volumes":        "geth-mainnet=ethereum/mainnet/geth/2000 irita-hub=cometbft/irishub-1/irita",
	}
	url := f.start(t)
	root := t.TempDir()
	out, err := runBootstrap(t, url, root)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}

	consul := readFile(t, filepath.Join(root, "etc/consul.d/host.hcl"))
	mustContain(t, "consul host.hcl", consul,
		`datacenter     = "use1"`,
		`node_name      = "i-0123456789abcdef0"`,
		`bind_addr      = "10.20.30.40"`,
		`retry_join     = ["provider=aws region=eu-west-1 tag_key=consul-cluster tag_value=prod addr_type=private_v4"]`,
		`availability_zone = "eu-west-1b"`)
	nomad := readFile(t, filepath.Join(root, "etc/nomad.d/host.hcl"))
	mustContain(t, "nomad host.hcl", nomad, `datacenter = "use1"`, `region     = "global"`,
		`name       = "i-0123456789abcdef0"`, `node_class = "node"`)

	// The agent's config is read by the agent's own loader.
	cfg, err := config.Load(filepath.Join(root, "etc/chainwarden/agent.hcl"))
	if err != nil {
		t.Fatalf("agent.hcl does not load: %v\n%s", err, readFile(t, filepath.Join(root, "etc/chainwarden/agent.hcl")))
	}
	if cfg.Nomad == nil || cfg.Nomad.Enabled == nil || !*cfg.Nomad.Enabled {
		t.Errorf("node host: nomad discovery not enabled: %+v", cfg.Nomad)
	}
	if cfg.Consul.Address != "127.0.0.1:8500" {
		t.Errorf("consul address = %q", cfg.Consul.Address)
	}
	if len(cfg.Volumes) != 2 {
		t.Fatalf("volumes = %+v", cfg.Volumes)
	}
	v := cfg.Volumes[0]
	if v.Name != "geth-mainnet" || v.Chain != "ethereum" || v.Network != "mainnet" || v.Client != "geth" || v.SizeGiB != 2000 ||
		v.MountPath != "/data/geth-mainnet" {
		t.Errorf("volume 0 = %+v", v)
	}
	if v := cfg.Volumes[1]; v.Name != "irita-hub" || v.Network != "irishub-1" || v.Client != "irita" || v.SizeGiB != 100 {
		t.Errorf("volume 1 = %+v (size from the agent's default)", v)
	}
	if got := enabledMarkers(t, root); strings.Join(got, " ") != "node" {
		t.Errorf("enabled = %v, want [node]", got)
	}
	if tokens, rejected := f.stats(); tokens == 0 || rejected != 0 {
		t.Errorf("IMDSv2: %d tokens, %d refused requests", tokens, rejected)
	}
}

func TestBootstrapSourcesAndPrecedence(t *testing.T) {
	f := newFakeIMDS(t)
	f.userData = strp("#chainwarden\n# a proxy host\nroles = proxy,node\nproxy = \"haproxy\"\ndatacenter = from-user-data\r\nnomad_region=emea\n")
	f.tags = map[string]string{"chainwarden-datacenter": "from-tag"}
	url := f.start(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/chainwarden"), 0o755); err != nil {
		t.Fatal(err)
	}
	host := "datacenter = from-host-conf\nnode_class = edge\nproxy = nginx\n"
	if err := os.WriteFile(filepath.Join(root, "etc/chainwarden/host.conf"), []byte(host), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runBootstrap(t, url, root)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	consul := readFile(t, filepath.Join(root, "etc/consul.d/host.hcl"))
	// tags > user-data > host.conf
	mustContain(t, "consul host.hcl", consul, `datacenter     = "from-tag"`, "tag_value=from-tag",
		"tag_key=chainwarden-consul", `chainwarden_roles = "node,proxy"`)
	nomad := readFile(t, filepath.Join(root, "etc/nomad.d/host.hcl"))
	mustContain(t, "nomad host.hcl", nomad, `region     = "emea"`, `node_class = "edge"`)
	if got := strings.Join(enabledMarkers(t, root), " "); got != "node proxy proxy-haproxy" {
		t.Errorf("enabled = %q", got)
	}
	mustContain(t, "log", out, "datacenter = from-tag (tag chainwarden-datacenter)", "proxy = haproxy (user-data)")
}

// An EC2 endpoint (a VPC interface endpoint, or a test's EC2 server) reaches both users of the EC2 API on a host:
// Consul's auto-join (go-discover's endpoint option) and chainwarden's volume calls (AWS_ENDPOINT_URL_EC2 in the
// file its units read). Without the setting the file goes again.
func TestBootstrapEC2Endpoint(t *testing.T) {
	f := newFakeIMDS(t)
	f.userData = strp("#chainwarden\nec2_endpoint = https://vpce-0a1b2c3d.ec2.eu-west-1.vpce.amazonaws.com/\n")
	url := f.start(t)
	root := t.TempDir()
	out, err := runBootstrap(t, url, root)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	mustContain(t, "consul host.hcl", readFile(t, filepath.Join(root, "etc/consul.d/host.hcl")),
		`retry_join     = ["provider=aws region=eu-west-1 tag_key=chainwarden-consul tag_value=dc1 addr_type=private_v4 endpoint=https://vpce-0a1b2c3d.ec2.eu-west-1.vpce.amazonaws.com"]`)
	env := filepath.Join(root, "etc/chainwarden/aws.env")
	mustContain(t, "aws.env", readFile(t, env), "\nAWS_ENDPOINT_URL_EC2=https://vpce-0a1b2c3d.ec2.eu-west-1.vpce.amazonaws.com\n")

	f = newFakeIMDS(t)
	out, err = runBootstrap(t, f.start(t), root)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	if _, err := os.Stat(env); err == nil {
		t.Errorf("aws.env stays after the setting went:\n%s", out)
	}
	if consul := readFile(t, filepath.Join(root, "etc/consul.d/host.hcl")); strings.Contains(consul, "endpoint=") {
		t.Errorf("endpoint in host.hcl without the setting:\n%s", consul)
	}
}

func TestBootstrapProxyOnlyWithoutTagsInMetadata(t *testing.T) {
	f := newFakeIMDS(t)
	f.userData = strp("#chainwarden\nroles = proxy\n")
	url := f.start(t)
	root := t.TempDir()
	// The endpoint can also come from the environment, as the unit would set it.
	out, err := runBootstrap(t, "", root, "CHAINWARDEN_IMDS_ENDPOINT="+url)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	mustContain(t, "log", out, "no instance tags in the metadata")
	if got := strings.Join(enabledMarkers(t, root), " "); got != "proxy proxy-nginx" {
		t.Errorf("enabled = %q", got)
	}
	cfg, err := config.Load(filepath.Join(root, "etc/chainwarden/agent.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Nomad != nil || len(cfg.Volumes) != 0 {
		t.Errorf("proxy host: nomad %+v, volumes %+v", cfg.Nomad, cfg.Volumes)
	}
	mustContain(t, "consul host.hcl", readFile(t, filepath.Join(root, "etc/consul.d/host.hcl")), `datacenter     = "dc1"`)
}

func TestBootstrapLeavesAnOperatorsAgentConfigAndForeignUserData(t *testing.T) {
	f := newFakeIMDS(t)
	f.userData = strp("#cloud-config\npackages: [htop]\n")
	url := f.start(t)
	root := t.TempDir()
	own := "consul {\n  address = \"127.0.0.1:8500\"\n}\n"
	dir := filepath.Join(root, "etc/chainwarden")
	if err := os.MkdirAll(filepath.Join(dir, "enabled"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "agent.hcl"), []byte(own), 0o640)
	os.WriteFile(filepath.Join(dir, "enabled", "proxy"), nil, 0o644) // stale from an earlier boot
	out, err := runBootstrap(t, url, root)
	if err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	if got := readFile(t, filepath.Join(dir, "agent.hcl")); got != own {
		t.Errorf("the operator's agent.hcl was rewritten:\n%s", got)
	}
	mustContain(t, "log", out, "user-data does not start with #chainwarden", "left alone")
	if got := strings.Join(enabledMarkers(t, root), " "); got != "node" {
		t.Errorf("enabled = %q (stale markers must go)", got)
	}
}

func TestBootstrapRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tags     map[string]string
		userData string
		want     string
	}{
		{"quote in a tag", map[string]string{"chainwarden-datacenter": `dc1" encrypt = "x`}, "", `datacenter = "dc1" encrypt`},
		{"hcl interpolation", map[string]string{"chainwarden-join-tag-value": "${file(\"/etc/shadow\")}"}, "", "join_tag_value"},
		{"space in the join tag", map[string]string{"chainwarden-join-tag-value": "a b"}, "", "an EC2 tag value without spaces"},
		{"unknown role", map[string]string{"chainwarden-roles": "node,validator"}, "", "a list of node and proxy"},
		{"unknown proxy", map[string]string{"chainwarden-proxy": "envoy"}, "", "nginx or haproxy"},
		{"bad volume", map[string]string{"chainwarden-volumes": "geth=ethereum/mainnet"}, "", "is not NAME=CHAIN/NETWORK/CLIENT"},
		{"glob volume", map[string]string{"chainwarden-volumes": "*"}, "", `"*"`},
		{"duplicate volume", map[string]string{"chainwarden-volumes": "a=x/y/z,a=x/y/w"}, "", "listed twice"},
		{"volumes on a proxy", map[string]string{"chainwarden-roles": "proxy", "chainwarden-volumes": "a=x/y/z"}, "", "has no node"},
		{"endpoint with a join option", map[string]string{"chainwarden-ec2-endpoint": "http://10.0.0.1 tag_key=x"}, "", "an http(s)://HOST[:PORT] URL"},
		{"endpoint not a URL", nil, "#chainwarden\nec2_endpoint = ec2.internal\n", `ec2_endpoint = "ec2.internal" (from user-data)`},
		{"unknown user-data setting", nil, "#chainwarden\ndatacentre = eu\n", `unknown setting "datacentre"`},
		{"user-data line without =", nil, "#chainwarden\nroles node\n", "line 2: expected setting = value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeIMDS(t)
			f.tags = tc.tags
			if tc.userData != "" {
				f.userData = strp(tc.userData)
			}
			root := t.TempDir()
			out, err := runBootstrap(t, f.start(t), root)
			if err == nil {
				t.Fatalf("bootstrap accepted it:\n%s", out)
			}
			mustContain(t, "error", out, tc.want)
			for _, p := range []string{"etc/consul.d/host.hcl", "etc/nomad.d/host.hcl", "etc/chainwarden/agent.hcl"} {
				if _, err := os.Stat(filepath.Join(root, p)); err == nil {
					t.Errorf("%s written despite the bad setting", p)
				}
			}
		})
	}
}

func TestBootstrapNeedsIMDSv2(t *testing.T) {
	// A metadata service that refuses the token PUT (or none at all): the boot step fails instead of guessing.
	srv := newFakeIMDS(t)
	url := srv.start(t)
	root := t.TempDir()
	out, err := runBootstrap(t, url+"/not-imds", root)
	if err == nil {
		t.Fatalf("bootstrap succeeded without a session token:\n%s", out)
	}
	mustContain(t, "error", out, "no IMDSv2 session token")
}

// TestBootstrapConfigsValidate checks the files the boot step writes, together with the image's base configs,
// with the real Consul and Nomad (the provisioning test does the same inside the image).
func TestBootstrapConfigsValidate(t *testing.T) {
	consul := testenv.Bin(t, "consul")
	nomad := testenv.Bin(t, "nomad")
	f := newFakeIMDS(t)
	f.tags = map[string]string{"chainwarden-roles": "node,proxy", "chainwarden-volumes": "cl=ethereum/sepolia/chainlink/50"}
	root := t.TempDir()
	if out, err := runBootstrap(t, f.start(t), root); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	cp := func(src, dst string) {
		t.Helper()
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(dst, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	cp("files/consul.d/consul.hcl", filepath.Join(root, "etc/consul.d/consul.hcl"))
	cp("files/nomad.d/nomad.hcl", filepath.Join(root, "etc/nomad.d/nomad.hcl"))
	if out, err := run(consul, "validate", filepath.Join(root, "etc/consul.d")); err != nil {
		t.Errorf("consul validate: %v\n%s", err, out)
	}
	if out, err := run(nomad, "config", "validate", filepath.Join(root, "etc/nomad.d")); err != nil {
		t.Errorf("nomad config validate: %v\n%s", err, out)
	}
	// The validators do reject a broken file (so the passes above mean something).
	os.WriteFile(filepath.Join(root, "etc/consul.d/broken.hcl"), []byte("bind_addr = [\n"), 0o644)
	if out, err := run(consul, "validate", filepath.Join(root, "etc/consul.d")); err == nil {
		t.Errorf("consul validate accepted a broken file:\n%s", out)
	}
	os.WriteFile(filepath.Join(root, "etc/nomad.d/broken.hcl"), []byte("client { no_such_option = 1 }\n"), 0o644)
	if out, err := run(nomad, "config", "validate", filepath.Join(root, "etc/nomad.d")); err == nil {
		t.Errorf("nomad config validate accepted a broken file:\n%s", out)
	}
}
