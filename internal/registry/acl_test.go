package registry

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
)

// denying is a fake Consul agent whose token may not write the services named in deny, as Consul answers it.
type denying struct {
	*fakes.Consul
	mu   sync.Mutex
	deny map[string]bool
}

func (d *denying) ServiceRegisterOpts(s *consulapi.AgentServiceRegistration, o consulapi.ServiceRegisterOpts) error {
	d.mu.Lock()
	refuse := d.deny[s.Name]
	d.mu.Unlock()
	if refuse {
		return consulapi.StatusError{Code: 403, Body: "Permission denied: token with AccessorID 'a' lacks permission 'service:write' on \"" + s.Name + "\""}
	}
	return d.Consul.ServiceRegisterOpts(s, o)
}

// A service the token may not write is refused alone: the others register and keep their checks up, Consul is not
// taken for down, the refusal is logged once (not every pass) and the registration is tried again each pass.
func TestRefusedServiceAlone(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	d := &denying{Consul: c, deny: map[string]bool{"eth-other": true}}
	var logs bytes.Buffer
	r := New(d, Options{AgentID: "host-a", TTL: 30 * time.Second, DeregisterAfter: time.Minute, Clock: clk},
		hclog.New(&hclog.LoggerOptions{Output: &logs}))
	other := svc("geth-b", "passing", "height 10")
	other.Name = "eth-other"
	ctx := context.Background()
	for i := range 3 {
		if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "height 10"), other}); err != nil {
			t.Fatal(err)
		}
		if r.Down() {
			t.Fatal("a refusal taken for an outage")
		}
		clk.Advance(time.Duration(i+1) * 11 * time.Second) // past a third of the TTL: the check is refreshed
	}
	wantCheck(t, c, "geth-a", "passing", "height 10")
	wantCheck(t, c, "geth-b", "", "")
	if s := c.ServiceByID("geth-b"); s != nil {
		t.Fatalf("refused service registered: %+v", s)
	}
	if n := strings.Count(logs.String(), "consul refused the agent's token"); n != 1 ||
		!strings.Contains(logs.String(), `lacks permission 'service:write' on \"eth-other\"`) {
		t.Fatalf("logged %d times:\n%s", n, logs.String())
	}
	if c.Calls("UpdateTTLOpts") < 3 {
		t.Fatalf("geth-a's check refreshed %d times in 3 passes", c.Calls("UpdateTTLOpts"))
	}

	// Granted: registered on the next pass, and said so.
	d.mu.Lock()
	d.deny = nil
	d.mu.Unlock()
	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "height 10"), other}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-b", "passing", "height 10")
	if !strings.Contains(logs.String(), "consul accepted the registration") {
		t.Fatalf("log:\n%s", logs.String())
	}
}
