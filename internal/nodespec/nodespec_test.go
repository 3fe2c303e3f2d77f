package nodespec

import (
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

func u64(v uint64) *uint64 { return &v }

func TestNormalizeAppliesKindDefaultsAndOverrides(t *testing.T) {
	n := Node{Name: "geth-0", Kind: probe.Ethereum, RPC: "http://10.0.0.5:31000", Service: "eth-mainnet", ChainID: u64(1),
		Source: SourceNomad, MaxLag: u64(20), MaxBlockAge: "30s"}
	if errs := n.Normalize(); errs != nil {
		t.Fatal(errs)
	}
	if n.Source != SourceNomad || n.Address != "10.0.0.5" || n.Port != 31000 {
		t.Fatalf("%+v", n)
	}
	if th := n.Thresholds; th.MaxLag != 20 || th.WarnLag != 2 || th.MaxBlockAge != 30*time.Second || th.FailAfter != 2 {
		t.Fatalf("thresholds %+v", th)
	}
	if n.WantChain() != "1" {
		t.Fatalf("want chain %q", n.WantChain())
	}
	if n.Chain.Confirmations != 2 || n.Chain.MinBlockTime != time.Second {
		t.Fatalf("chain %+v: want ethereum's defaults", n.Chain)
	}
	clique := Node{Name: "geth-1", Kind: probe.Ethereum, RPC: "http://h:1", Service: "s", ChainID: u64(1337), ReorgDepth: u64(6)}
	if errs := clique.Normalize(); errs != nil || clique.Chain.Confirmations != 6 {
		t.Fatalf("reorg_depth 6: chain %+v, %v", clique.Chain, errs)
	}
}

func TestNormalizeErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		node  Node
		field string
		msg   string
	}{
		{"bad kind", Node{Name: "x", Kind: "bitcoin", RPC: "http://h:1", Service: "s"}, "kind",
			`node "x": kind "bitcoin" is not one of ethereum, cometbft, chainlink`},
		{"cometbft needs network", Node{Name: "x", Kind: probe.CometBFT, RPC: "http://h:1", Service: "s"}, "",
			`node "x": network (the chain id, e.g. "irishub-1") is required for a cometbft node`},
		{"rpc is redacted", Node{Name: "x", Kind: probe.Ethereum, RPC: "wss://user:pw@h/key", Service: "s", ChainID: u64(1)}, "rpc",
			`node "x": rpc "wss://h" is not an http(s) URL`},
		{"lag order", Node{Name: "x", Kind: probe.Ethereum, RPC: "http://h:1", Service: "s", ChainID: u64(1), WarnLag: u64(20)}, "warn_lag",
			`node "x": warn_lag 20 is above max_lag 10`},
		{"bad duration", Node{Name: "x", Kind: probe.CometBFT, RPC: "http://h:1", Service: "s", Network: "n", MaxBlockAge: "-1s"}, "max_block_age",
			`node "x": max_block_age: "-1s" is not a positive duration (like "1s" or "2m")`},
		{"balance", Node{Name: "x", Kind: probe.Chainlink, RPC: "http://h:1", Service: "s", APIKey: "k", APISecret: "s", MinBalance: "abc"}, "min_balance",
			`node "x": min_balance: "abc" is not a non-negative decimal amount of ether`},
		{"reorg depth of a cometbft node", Node{Name: "x", Kind: probe.CometBFT, RPC: "http://h:1", Service: "s", Network: "n", ReorgDepth: u64(3)}, "reorg_depth",
			`node "x": reorg_depth is for ethereum nodes (a committed cometbft block is final)`},
		{"reorg depth too deep", Node{Name: "x", Kind: probe.Ethereum, RPC: "http://h:1", Service: "s", ChainID: u64(1), ReorgDepth: u64(65)}, "reorg_depth",
			`node "x": reorg_depth 65 is above 64 (the block hashes kept per source reach 128 below its head)`},
		{"dotted service", Node{Name: "x", Kind: probe.CometBFT, RPC: "http://h:1", Service: "a.b", Network: "n"}, "service",
			`node "x": service "a.b" must be letters, digits and dashes (no dots)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.node.Normalize()
			if len(errs) != 1 || errs[0].Field != tc.field || errs[0].Msg != tc.msg {
				t.Fatalf("got %#v\nwant one error on %q: %s", errs, tc.field, tc.msg)
			}
			if strings.Contains(errs.Error(), "pw") || strings.Contains(errs.Error(), "key") {
				t.Fatalf("error leaks a secret: %v", errs)
			}
		})
	}
}

func TestReferenceKindFollowsItsService(t *testing.T) {
	nodes := []Node{{Name: "c", Kind: probe.CometBFT, Service: "irita"}}
	r := Reference{Name: "r", Service: "irita", RPC: "https://p.example/key"}
	if errs := r.Normalize(nodes); errs != nil || r.Kind != probe.CometBFT {
		t.Fatalf("kind %q, errs %v", r.Kind, errs)
	}
	r = Reference{Name: "r", Service: "other", RPC: "ftp://p.example/key"}
	errs := r.Normalize(nodes)
	if r.Kind != probe.Ethereum || len(errs) != 1 || errs[0].Field != "rpc" || strings.Contains(errs.Error(), "key") {
		t.Fatalf("kind %q, errs %v", r.Kind, errs)
	}
}

func TestEtherToWei(t *testing.T) {
	for in, want := range map[string]string{"1": "1000000000000000000", "0.5": "500000000000000000", "0": "0", "0.000000000000000001": "1"} {
		got, err := EtherToWei(in)
		if err != nil || got != want {
			t.Errorf("EtherToWei(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"-1", "abc", "0.0000000000000000001"} {
		if _, err := EtherToWei(in); err == nil {
			t.Errorf("EtherToWei(%s): no error", in)
		}
	}
}

func TestChainlinkCredentials(t *testing.T) {
	cl := func(f func(n *Node)) Node {
		n := Node{Name: "cl", Kind: probe.Chainlink, RPC: "http://h:6688", Service: "s"}
		f(&n)
		return n
	}
	for _, tc := range []struct {
		name  string
		node  Node
		field string
		msg   string // "" = valid
		every time.Duration
	}{
		{name: "token", node: cl(func(n *Node) { n.APIKey, n.APISecret = "k", "s3cret" }), every: time.Minute},
		{name: "email and password", node: cl(func(n *Node) { n.APIEmail, n.APIPassword = "ops@example.com", "pw1" }), every: time.Minute},
		{name: ".api file, own cadence", node: cl(func(n *Node) { n.APICredentialsFile, n.AuthChecksInterval = "/chainlink/.api", "5m" }),
			every: 5 * time.Minute},
		{name: "every probe", node: cl(func(n *Node) { n.APIKey, n.APISecret, n.AuthChecksInterval = "k", "s3cret", "0s" })},
		{name: "half a token", node: cl(func(n *Node) { n.APIKey = "k" }),
			msg: `node "cl": api_key and api_secret go together (a user token: POST /v2/user/token)`},
		{name: "email without password", node: cl(func(n *Node) { n.APIEmail = "ops@example.com" }),
			msg: `node "cl": api_email and api_password go together`},
		{name: "two ways", node: cl(func(n *Node) { n.APIKey, n.APISecret, n.APICredentialsFile = "k", "s3cret", "/x/.api" }),
			msg: `node "cl": give one of api_key/api_secret, api_email/api_password and api_credentials_file`},
		{name: "bad interval", node: cl(func(n *Node) { n.APIKey, n.APISecret, n.AuthChecksInterval = "k", "s3cret", "often" }),
			field: "auth_checks_interval", msg: `node "cl": auth_checks_interval: "often" is not a duration (like "1m"; "0s": every probe)`},
		{name: "not a chainlink node", node: Node{Name: "g", Kind: probe.Ethereum, RPC: "http://h:1", Service: "s", ChainID: u64(1),
			APIEmail: "ops@example.com", APIPassword: "pw1"},
			msg: `node "g": api_key, api_email, api_credentials_file, min_balance, max_failed_runs and auth_checks_interval are for chainlink nodes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.node
			errs := n.Normalize()
			if tc.msg == "" {
				tg := n.Target()
				if errs != nil || n.AuthEvery != tc.every || tg.AuthEvery != tc.every || tg.APIEmail != n.APIEmail ||
					tg.APIPassword != n.APIPassword || tg.APICredentialsFile != n.APICredentialsFile || tg.APISecret != n.APISecret {
					t.Fatalf("errs %v, every %s, target %+v", errs, n.AuthEvery, tg)
				}
				return
			}
			if len(errs) != 1 || errs[0].Field != tc.field || errs[0].Msg != tc.msg {
				t.Fatalf("got %#v\nwant one error on %q: %s", errs, tc.field, tc.msg)
			}
			if strings.Contains(errs.Error(), "s3cret") || strings.Contains(errs.Error(), "pw1") {
				t.Fatalf("error leaks a secret: %v", errs)
			}
		})
	}
}
