package jobs_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The Chainlink and IRITA images can't be built here: their specs run with a stand-in image (a static program that
// waits to be stopped), so the real Nomad renders their templates from real Consul data and Nomad Variables, and
// the tests read what landed in the allocation's directories.

// run runs an embedded spec on the cluster, waits for its deployment and returns its allocation.
func run(t *testing.T, c *testenv.Cluster, name string, vars map[string]string) *nomadapi.Allocation {
	t.Helper()
	job := c.Run(t, name, vars)
	return c.Allocation(t, *job.ID)
}

// register adds a service instance to Consul with a TTL check in the given status, as the chainwarden agent does.
func register(t *testing.T, c *testenv.Cluster, id, name, addr string, port int, status string, tags []string, meta map[string]string) {
	t.Helper()
	err := c.Consul.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: id, Name: name, Address: addr, Port: port, Tags: tags, Meta: meta,
		Check: &consulapi.AgentServiceCheck{CheckID: registry.CheckID(id), TTL: "1h", Status: status},
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertSecretsOnlyUnderSecrets fails if any file of the allocation outside the task's secrets/ holds a secret.
func assertSecretsOnlyUnderSecrets(t *testing.T, allocDir, task string, secrets ...string) {
	t.Helper()
	secretsDir := filepath.Join(allocDir, task, "secrets")
	found := 0
	err := filepath.WalkDir(allocDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, s := range secrets {
			if !strings.Contains(string(b), s) {
				continue
			}
			if strings.HasPrefix(p, secretsDir+"/") {
				found++
				continue
			}
			t.Errorf("secret found outside secrets/: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found < len(secrets) {
		t.Errorf("only %d of %d secrets found under %s", found, len(secrets), secretsDir)
	}
}

func TestChainlinkTemplates(t *testing.T) {
	c := testenv.StartCluster(t)
	image := c.Docker.IdleImage(t)
	secrets := map[string]string{
		"database_url":      "postgresql://chainlink:pg-s3cret-8812@db.internal:5432/chainlink?sslmode=require",
		"keystore_password": `ks-"pass"-77x`,
		"api_email":         "ops@example.com",
		"api_password":      "api-s3cret-4431",
	}
	c.PutVar(t, "nomad/jobs/chainlink", secrets)
	// The fleet as the agent registered it: two passing nodes (one with its WS port), one critical.
	register(t, c, "geth-geth-0", "eth-mainnet", "10.0.0.11", 8545, "passing", []string{"chainwarden", "ws_port=8546"}, nil)
	register(t, c, "geth-geth-1", "eth-mainnet", "10.0.0.12", 8545, "passing", []string{"chainwarden"}, nil)
	register(t, c, "openethereum-openethereum-0", "eth-mainnet", "10.0.0.13", 8545, "critical", []string{"chainwarden", "ws_port=8546"}, nil)

	a := run(t, c, "chainlink", map[string]string{
		"image": image, "nodes": "1", "min_healthy_time": "1s", "health_check": "task_states", // no agent judges the stand-in "cpu": "100", "memory": "64", "p2p_port": strconv.Itoa(testenv.FreePort(t)),
	})
	dir := filepath.Join(c.Nomad.DataDir, "alloc", a.ID)
	cfg := readFile(t, filepath.Join(dir, "chainlink", "local", "config.toml"))
	for _, want := range []string{
		"ChainID = '1'",
		"Name = 'geth-geth-0'\nHTTPURL = 'http://10.0.0.11:8545'\nWSURL = 'ws://10.0.0.11:8546'",
		"Name = 'geth-geth-1'\nHTTPURL = 'http://10.0.0.12:8545'\n",
		"ListenIP = '127.0.0.1'",
		"[Database.Lock]\nEnabled = true",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config.toml lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "openethereum") || strings.Contains(cfg, "10.0.0.13") {
		t.Errorf("config.toml lists the critical node:\n%s", cfg)
	}
	if strings.Contains(cfg, "Name = 'geth-geth-1'\nHTTPURL = 'http://10.0.0.12:8545'\nWSURL") {
		t.Errorf("a WSURL was made up for a node without a ws_port tag:\n%s", cfg)
	}
	sec := readFile(t, filepath.Join(dir, "chainlink", "secrets", "secrets.toml"))
	if !strings.Contains(sec, `URL = "`+secrets["database_url"]+`"`) || !strings.Contains(sec, `Keystore = "ks-\"pass\"-77x"`) {
		t.Errorf("secrets.toml:\n%s", sec)
	}
	if got := readFile(t, filepath.Join(dir, "chainlink", "secrets", "apicredentials")); got != "ops@example.com\napi-s3cret-4431\n" && got != "ops@example.com\napi-s3cret-4431" {
		t.Errorf("apicredentials: %q", got)
	}
	for _, f := range []string{"secrets.toml", "apicredentials"} {
		st, err := os.Stat(filepath.Join(dir, "chainlink", "secrets", f))
		if err != nil || st.Mode().Perm() != 0o400 {
			t.Errorf("%s mode: %v %v", f, st.Mode(), err)
		}
	}
	assertSecretsOnlyUnderSecrets(t, dir, "chainlink", "pg-s3cret-8812", "ks-", "api-s3cret-4431")

	// The fleet changes: geth-geth-0 goes critical. Chainlink's endpoints follow.
	if err := c.Consul.Client.Agent().UpdateTTL(registry.CheckID("geth-geth-0"), "lagging", "critical"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 90*time.Second, "config.toml without the critical node", func() error {
		cfg := readFile(t, filepath.Join(dir, "chainlink", "local", "config.toml"))
		if strings.Contains(cfg, "geth-geth-0") {
			return fmt.Errorf("still listed")
		}
		if !strings.Contains(cfg, "geth-geth-1") {
			return fmt.Errorf("the passing node is gone too:\n%s", cfg)
		}
		return nil
	})
}

func TestIRITATemplates(t *testing.T) {
	c := testenv.StartCluster(t, "irita")
	image := c.Docker.IdleImage(t)
	genesis := `{"chain_id":"irita-test","validators":[]}`
	c.PutVar(t, "nomad/jobs/irita", map[string]string{"genesis": genesis})
	for i := 0; i < 4; i++ {
		c.PutVar(t, fmt.Sprintf("nomad/jobs/irita/validator-%d", i), map[string]string{
			"node_id":            fmt.Sprintf("%040d", i+1),
			"node_key":           fmt.Sprintf(`{"priv_key":"node-secret-%d"}`, i),
			"priv_validator_key": fmt.Sprintf(`{"priv_key":"val-secret-%d"}`, i),
		})
	}
	// Validators 1-3 on other hosts, registered by their Nomad clients (real Consul data, as Nomad registers it).
	for i := 1; i < 4; i++ {
		err := c.Consul.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
			ID: fmt.Sprintf("_nomad-task-other-%d", i), Name: "irita-p2p", Address: fmt.Sprintf("10.0.0.%d", i+1), Port: 26656,
			Tags: []string{"chainwarden-p2p"}, Meta: map[string]string{"validator_index": strconv.Itoa(i)},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	p2p := testenv.FreePort(t)
	a := run(t, c, "irita", map[string]string{
		"image": image, "binary": "/idle", "validators": "1", "min_healthy_time": "1s", "health_check": "task_states", "host_volume": "irita", "chain_id": "irita-test",
		"cpu": "100", "memory": "64", "p2p_port": strconv.Itoa(p2p), "metrics_port": strconv.Itoa(testenv.FreePort(t)),
	})
	dir := filepath.Join(c.Nomad.DataDir, "alloc", a.ID)
	peersEnv := strings.TrimSpace(readFile(t, filepath.Join(dir, "irita", "local", "peers.env")))
	const prefix = "IRITA_P2P_PERSISTENT_PEERS="
	if !strings.HasPrefix(peersEnv, prefix) {
		t.Fatalf("peers.env: %q", peersEnv)
	}
	var peers []string
	for _, p := range strings.Split(strings.TrimPrefix(peersEnv, prefix), ",") {
		if p != "" {
			peers = append(peers, p)
		}
	}
	sort.Strings(peers)
	want := []string{
		fmt.Sprintf("%040d@10.0.0.2:26656", 2),
		fmt.Sprintf("%040d@10.0.0.3:26656", 3),
		fmt.Sprintf("%040d@10.0.0.4:26656", 4),
	}
	if strings.Join(peers, ",") != strings.Join(want, ",") {
		t.Errorf("persistent peers %v, want %v (every other validator, not itself)", peers, want)
	}
	// Nomad registered this validator's own P2P service in Consul with its index: the others render it likewise.
	svcs, _, err := c.Consul.Client.Health().Service("irita-p2p", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	own := false
	for _, s := range svcs {
		if s.Service.Meta["validator_index"] == "0" && s.Service.Port == p2p && s.Service.Address == "127.0.0.1" {
			own = true
		}
	}
	if !own {
		t.Errorf("validator 0's P2P service not registered in Consul: %d instances", len(svcs))
	}
	if got := readFile(t, filepath.Join(dir, "irita", "local", "genesis.json")); got != genesis {
		t.Errorf("genesis.json = %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "irita", "secrets", "priv_validator_key.json")); got != `{"priv_key":"val-secret-0"}` {
		t.Errorf("priv_validator_key.json = %q (want validator 0's)", got)
	}
	if got := readFile(t, filepath.Join(dir, "irita", "secrets", "node_key.json")); got != `{"priv_key":"node-secret-0"}` {
		t.Errorf("node_key.json = %q", got)
	}
	assertSecretsOnlyUnderSecrets(t, dir, "irita", "val-secret-0", "node-secret-0")
	// The rendered peers reach the process's environment.
	out := c.Docker.Run(t, "ps", "-q", "--filter", "label=com.hashicorp.nomad.alloc_id="+a.ID)
	id := strings.TrimSpace(out)
	env := c.Docker.Run(t, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", id)
	if !strings.Contains(env, peersEnv) || !strings.Contains(env, "IRITA_PRIV_VALIDATOR_KEY_FILE=/secrets/priv_validator_key.json") {
		t.Errorf("container env lacks the peers or key paths:\n%s", env)
	}
}
