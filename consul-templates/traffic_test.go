package consultemplates

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// verdicts stands in for the chainwarden agent until it is on main: every 500 ms it reads each node's real height
// and drives the node's TTL check as the agent's verdict rules do (lag against the highest height seen, block age,
// probe errors), without damping.
type verdicts struct {
	consul *testenv.Consul
	nodes  []*testenv.Geth

	mu     sync.Mutex
	status map[string]string
	head   uint64
	height map[string]uint64
	moved  map[string]time.Time
}

const (
	warnLag     = 3
	maxLag      = 6
	maxBlockAge = 5 * time.Second
)

func startVerdicts(t *testing.T, consul *testenv.Consul, nodes []*testenv.Geth) *verdicts {
	v := &verdicts{consul: consul, nodes: nodes, status: map[string]string{}, height: map[string]uint64{},
		moved: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			v.once(t)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return v
}

func (v *verdicts) once(t *testing.T) {
	type probe struct {
		h   uint64
		err error
	}
	probes := make([]probe, len(v.nodes))
	var wg sync.WaitGroup
	for i, g := range v.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probes[i].h, probes[i].err = blockNumber(g.RPC, time.Second)
		}()
	}
	wg.Wait()
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	for i, g := range v.nodes {
		if p := probes[i]; p.err == nil {
			if p.h > v.height[g.Name] || v.moved[g.Name].IsZero() {
				v.moved[g.Name] = now
			}
			v.height[g.Name] = p.h
			v.head = max(v.head, p.h)
		}
	}
	for i, g := range v.nodes {
		st := "passing"
		lag := v.head - v.height[g.Name]
		switch {
		case probes[i].err != nil, lag >= maxLag, now.Sub(v.moved[g.Name]) > maxBlockAge:
			st = "critical"
		case lag >= warnLag:
			st = "warning"
		}
		if v.status[g.Name] != st {
			v.status[g.Name] = st
			_ = v.consul.Client.Agent().UpdateTTL("chainwarden:"+g.Name,
				fmt.Sprintf("height %d, %d behind head %d", v.height[g.Name], lag, v.head), st)
		}
	}
}

func (v *verdicts) get(node string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.status[node]
}

func blockNumber(url string, timeout time.Duration) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req := `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`
	hreq, _ := newPost(ctx, url, req)
	resp, err := httpClient.Do(hreq)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r rpcResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("rpc error %d %s", r.Error.Code, r.Error.Message)
	}
	var n hexutil.Uint64
	if err := json.Unmarshal(r.Result, &n); err != nil {
		return 0, fmt.Errorf("result %s: %w", r.Result, err)
	}
	return uint64(n), nil
}

// hammer keeps `workers` clients calling eth_blockNumber through url until stopped, counting failures.
type hammer struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	done       sync.WaitGroup
}

func startHammer(url string, workers int) *hammer {
	h := &hammer{}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	for i := 0; i < workers; i++ {
		h.done.Add(1)
		go func() {
			defer h.done.Done()
			for ctx.Err() == nil {
				if _, err := blockNumber(url, 20*time.Second); err != nil {
					h.failed.Add(1)
					h.mu.Lock()
					if len(h.errs) < 10 {
						h.errs = append(h.errs, err.Error())
					}
					h.mu.Unlock()
					continue
				}
				h.ok.Add(1)
			}
		}()
	}
	return h
}

func (h *hammer) finish() (ok, failed int64, errs []string) {
	h.stop()
	h.done.Wait()
	return h.ok.Load(), h.failed.Load(), h.errs
}

// TestClientKeepsReadingThroughLagCrashAndFallback runs a real 3-node Clique network behind both proxies and a
// separate geth --dev node as the fallback. Clients hammering eth_blockNumber through each proxy must see no failed
// call while one node lags (its peers removed: warning, then critical) and while another is killed (SIGKILL); once
// every node is critical, the fallback answers (its chain id, 1337, differs from the network's 4242).
func TestClientKeepsReadingThroughLagCrashAndFallback(t *testing.T) {
	consul := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 3)
	fb := testenv.StartGethDev(t, "fallback")
	for _, g := range net.Nodes {
		register(t, consul, service, g.Name, "127.0.0.1", g.RPCPort, "passing", nil)
	}
	if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/fallback/" + service, Value: []byte(fb.RPC)}, nil); err != nil {
		t.Fatal(err)
	}
	v := startVerdicts(t, consul, net.Nodes)
	var proxies []*proxy
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul)
		p.waitConfig(t, "three nodes", expectStates(kind, map[string]string{"clique-0": "server", "clique-1": "server", "clique-2": "server"}))
		proxies = append(proxies, p)
	}
	hammers := map[string]*hammer{}
	for _, p := range proxies {
		hammers[p.kind] = startHammer(p.URL+"/"+service, 4)
	}
	time.Sleep(2 * time.Second)

	// A node that lost its peers: its RPC answers, with an ever older head.
	lagging := net.Nodes[2]
	if err := net.Isolate(lagging); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "lagging node warning", func() error {
		if st := v.get(lagging.Name); st != "warning" && st != "critical" {
			return fmt.Errorf("%s is %s", lagging.Name, st)
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, "lagging node critical", func() error {
		if st := v.get(lagging.Name); st != "critical" {
			return fmt.Errorf("%s is %s", lagging.Name, st)
		}
		return nil
	})
	for _, p := range proxies {
		p.waitConfig(t, "lagging node out", expectStates(p.kind, map[string]string{lagging.Name: "absent"}))
	}
	time.Sleep(2 * time.Second)
	// Once it is out, no answer comes from it: every answer is at most a block or two behind the sealer.
	for _, p := range proxies {
		for i := 0; i < 20; i++ {
			head, err1 := net.Nodes[0].BlockNumber()
			got, err2 := blockNumber(p.URL+"/"+service, 5*time.Second)
			if err1 != nil || err2 != nil {
				t.Fatalf("%s: %v %v", p.kind, err1, err2)
			}
			if got+2 < head {
				t.Errorf("%s answered height %d, sealer at %d: the lagging node still serves", p.kind, got, head)
			}
		}
	}

	// A crash.
	crashed := net.Nodes[1]
	if err := crashed.Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "crashed node critical", func() error {
		if st := v.get(crashed.Name); st != "critical" {
			return fmt.Errorf("%s is %s", crashed.Name, st)
		}
		return nil
	})
	for _, p := range proxies {
		p.waitConfig(t, "crashed node out", expectStates(p.kind, map[string]string{crashed.Name: "absent", "clique-0": "server"}))
	}
	time.Sleep(2 * time.Second)
	for _, p := range proxies {
		ok, failed, errs := hammers[p.kind].finish()
		t.Logf("%s: %d reads succeeded, %d failed through lag and crash", p.kind, ok, failed)
		if failed != 0 {
			t.Errorf("%s: %d of %d reads failed: %s", p.kind, failed, ok+failed, strings.Join(errs, "; "))
		}
		if ok == 0 {
			t.Errorf("%s: no read succeeded", p.kind)
		}
	}

	// Every node critical: the sealer stops too; the fallback answers.
	net.Nodes[0].Stop()
	for _, p := range proxies {
		p.waitConfig(t, "no node left", expectStates(p.kind, map[string]string{"clique-0": "absent", "clique-1": "absent", "clique-2": "absent"}))
		testenv.Eventually(t, 20*time.Second, p.kind+" answers from the fallback", func() error {
			r, err := call(p.URL+"/"+service, "eth_chainId")
			if err != nil {
				return err
			}
			if r.Error != nil {
				return fmt.Errorf("rpc error %s", r.Error.Message)
			}
			var id hexutil.Uint64
			if err := json.Unmarshal(r.Result, &id); err != nil {
				return err
			}
			if uint64(id) != testenv.DevChainID {
				return fmt.Errorf("chain id %d, want the fallback's %d", id, testenv.DevChainID)
			}
			return nil
		})
	}
}
