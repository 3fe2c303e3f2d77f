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
