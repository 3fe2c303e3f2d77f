package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// exampleVars are the variables each spec is planned with on the one-node test cluster (docs/JOBS.md has the
// production ones): small resources, free static ports, and single-host counts for the multi-host groups.
func exampleVars(t *testing.T) map[string][]string {
	port := func() string { return strconv.Itoa(testenv.FreePort(t)) }
	small := []string{"cpu=200", "memory=256"}
	return map[string][]string{
		"geth":         append([]string{"image=local/geth:test", "host_volume=geth-mainnet", "p2p_port=" + port()}, small...),
		"openethereum": append([]string{"host_volume=openethereum-mainnet", "public_ip=203.0.113.10", "p2p_port=" + port(), "rpc_port=" + port(), "ws_port=" + port()}, small...),
		"chainlink":    append([]string{"nodes=1", "p2p_port=" + port()}, small...),
		"irita":        append([]string{"validators=1", "host_volume=irita", "p2p_port=" + port(), "metrics_port=" + port()}, small...),
		"cometbft":     append([]string{"host_volume=cometbft", "chain_id=cw-test", "p2p_port=" + port()}, small...),
	}
}

func jobCLI(t *testing.T, nomadAddr string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("NOMAD_ADDR", nomadAddr)
	var out, errOut bytes.Buffer
	code := jobMain(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func withVars(args []string, vars []string) []string {
	for _, v := range vars {
		args = append(args, "-var", v)
	}
	return args
}

// TestJobSpecsValidateAndPlan checks every embedded spec against a real Nomad with the docker driver and Consul:
// `nomad job validate` (the nomad CLI itself), and `chainwarden job validate` and `plan` with example variables,
// which must place every allocation.
func TestJobSpecsValidateAndPlan(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real Nomad and dockerd")
	}
	consul := testenv.StartConsul(t)
	docker := testenv.StartDocker(t)
	nomad := testenv.StartNomad(t, testenv.NomadOptions{
		HostVolumes: []string{"geth-mainnet", "openethereum-mainnet", "irita", "cometbft"},
		Docker:      docker, ConsulAddr: consul.Addr,
	})
	nomadBin := testenv.Bin(t, "nomad")
	for name, vars := range exampleVars(t) {
		t.Run(name, func(t *testing.T) {
			// The nomad CLI parses the file itself and validates on the server.
			args := withVars([]string{"job", "validate", "-address", nomad.Addr}, vars)
			args = append(args, filepath.Join("..", "..", "jobs", name+".nomad.hcl"))
			out, err := exec.Command(nomadBin, args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Job validation successful") {
				t.Fatalf("nomad job validate %s: %v\n%s", name, err, out)
			}
			code, stdout, stderr := jobCLI(t, nomad.Addr, withVars([]string{"validate", name}, vars)...)
			if code != 0 || !strings.Contains(stdout, "Job validation successful") {
				t.Fatalf("chainwarden job validate %s: exit %d\n%s%s", name, code, stdout, stderr)
			}
			code, stdout, stderr = jobCLI(t, nomad.Addr, withVars([]string{"plan", name}, vars)...)
			if code != 0 {
				t.Fatalf("chainwarden job plan %s: exit %d\n%s%s", name, code, stdout, stderr)
			}
			for _, want := range []string{`+ Job: "` + name + `"`, "(1 create)", "All tasks successfully allocated", "Job Modify Index: 0"} {
				if !strings.Contains(stdout, want) {
					t.Errorf("plan output lacks %q:\n%s", want, stdout)
				}
			}
		})
	}

	t.Run("errors read like nomad's", func(t *testing.T) {
		// A variable the spec doesn't declare.
		code, _, stderr := jobCLI(t, nomad.Addr, "plan", "geth", "-var", "imagee=x")
		if code != 1 || !strings.Contains(stderr, "Error parsing job file from geth.nomad.hcl") || !strings.Contains(stderr, "imagee") {
			t.Errorf("undeclared variable: exit %d\n%s", code, stderr)
		}
		// A value of the wrong type.
		code, _, stderr = jobCLI(t, nomad.Addr, "plan", "geth", "-var", "memory=lots")
		if code != 1 || !strings.Contains(stderr, "memory") {
			t.Errorf("bad number: exit %d\n%s", code, stderr)
		}
		// No client has the host volume: the plan says so the way Nomad does.
		vars := append(exampleVars(t)["geth"], "host_volume=geth-sepolia")
		code, stdout, _ := jobCLI(t, nomad.Addr, withVars([]string{"plan", "geth"}, vars)...)
		if code != 1 || !strings.Contains(stdout, `Task Group "geth" (failed to place 1 allocation)`) ||
			!strings.Contains(stdout, `* Constraint "missing compatible host volumes": 1 nodes excluded by filter`) {
			t.Errorf("missing host volume plan: exit %d\n%s", code, stdout)
		}
		// Two Chainlink nodes need two hosts.
		vars = append(exampleVars(t)["chainlink"], "nodes=2")
		code, stdout, _ = jobCLI(t, nomad.Addr, withVars([]string{"plan", "chainlink"}, vars)...)
		if code != 1 || !strings.Contains(stdout, `distinct_hosts`) {
			t.Errorf("chainlink pair on one host: exit %d\n%s", code, stdout)
		}
		// run: registered, then the placement failure explained, exit 1.
		vars = append(exampleVars(t)["cometbft"], "host_volume=nowhere", "job_name=cometbft-nowhere")
		code, stdout, stderr = jobCLI(t, nomad.Addr, withVars([]string{"run", "cometbft"}, vars)...)
		if code != 1 || !strings.Contains(stderr, `failed to place all allocations`) ||
			!strings.Contains(stderr, `missing compatible host volumes`) {
			t.Errorf("run without the host volume: exit %d\n%s%s", code, stdout, stderr)
		}
	})

	t.Run("list and render", func(t *testing.T) {
		code, stdout, _ := jobCLI(t, nomad.Addr, "list")
		for _, n := range []string{"chainlink", "cometbft", "geth", "irita", "openethereum"} {
			if code != 0 || !strings.Contains(stdout, n+"\n") {
				t.Errorf("list lacks %s: %q", n, stdout)
			}
		}
		code, stdout, _ = jobCLI(t, nomad.Addr, "render", "geth")
		if code != 0 || !strings.Contains(stdout, `job "geth"`) {
			t.Errorf("render: exit %d %q", code, stdout)
		}
		code, stdout, stderr := jobCLI(t, nomad.Addr, "render", "geth", "-json", "-var", "image=local/geth:x", "-var", "network=dev")
		if code != 0 || !strings.Contains(stdout, `"image": "local/geth:x"`) || !strings.Contains(stdout, `"--dev"`) ||
			!strings.Contains(stdout, `"--http.addr=${NOMAD_IP_rpc}"`) {
			t.Errorf("render -json: exit %d\n%s%s", code, stdout, stderr)
		}
		// OpenEthereum's public IP: from EC2 metadata (Nomad's env_aws attribute, interpolated on the client, and
		// a constraint that the client has it), or the variable.
		code, stdout, stderr = jobCLI(t, nomad.Addr, "render", "openethereum", "-json")
		if code != 0 || !strings.Contains(stdout, `"--nat=extip:${attr.unique.platform.aws.public-ipv4}"`) ||
			!strings.Contains(stdout, `"LTarget": "${attr.unique.platform.aws.public-ipv4}"`) || !strings.Contains(stdout, `"Operand": "is_set"`) {
			t.Errorf("openethereum render: exit %d\n%s%s", code, stdout, stderr)
		}
		code, stdout, _ = jobCLI(t, nomad.Addr, "render", "openethereum", "-json", "-var", "public_ip=203.0.113.10")
		if code != 0 || !strings.Contains(stdout, `"--nat=extip:203.0.113.10"`) || strings.Contains(stdout, "is_set") {
			t.Errorf("openethereum render with public_ip: exit %d\n%s", code, stdout)
		}
	})
}
