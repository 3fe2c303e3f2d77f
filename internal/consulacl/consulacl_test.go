package consulacl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/consulclient"
)

type fakeACL struct{ err error }

func (f fakeACL) TokenReadSelf(*consulapi.QueryOptions) (*consulapi.ACLToken, *consulapi.QueryMeta, error) {
	if f.err != nil {
		return nil, nil, f.err
	}
	return &consulapi.ACLToken{AccessorID: "acc-1"}, &consulapi.QueryMeta{}, nil
}

// fakeAuthz allows what is in allow ("resource:access:segment").
type fakeAuthz struct {
	allow map[string]bool
	err   error
}

func (f fakeAuthz) Authorize(_ context.Context, reqs []consulclient.Authorization) ([]consulclient.Authorization, error) {
	if f.err != nil {
		return nil, f.err
	}
	out := make([]consulclient.Authorization, len(reqs))
	for i, r := range reqs {
		r.Allow = f.allow[r.Resource+":"+r.Access+":"+r.Segment]
		out[i] = r
	}
	return out, nil
}

var needs = []Need{
	{Resource: "service", Segment: "eth-mainnet", Access: "write", Why: "register the nodes of eth-mainnet"},
	{Resource: "key", Segment: "chainwarden/heads/eth-mainnet/geth-a", Access: "write", Why: "publish the head of geth-a"},
}

func TestCheck(t *testing.T) {
	notFound := fmt.Errorf("wrapped: %w", consulapi.StatusError{Code: 403, Body: "token does not exist: ACL not found"})
	all := map[string]bool{"service:write:eth-mainnet": true, "key:write:chainwarden/heads/eth-mainnet/geth-a": true}
	for _, tc := range []struct {
		name     string
		acl      fakeACL
		authz    fakeAuthz
		hasToken bool
		enabled  bool
		want     string // "" = no error
		is       []error
		decided  bool
	}{
		{name: "all allowed", authz: fakeAuthz{allow: all}, hasToken: true, enabled: true},
		{name: "acls off", acl: fakeACL{consulapi.StatusError{Code: 401, Body: "ACL support disabled"}}},
		{name: "unknown token", acl: fakeACL{notFound}, hasToken: true, enabled: true,
			want: "consul does not know the token given", is: []error{ErrUnknownToken}, decided: true},
		{name: "no token, anonymous lacks", acl: fakeACL{notFound}, authz: fakeAuthz{allow: map[string]bool{"service:write:eth-mainnet": true}},
			enabled: true, want: `no consul token given (set CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN) and consul has acls on; ` +
				`consul token lacks key:write on "chainwarden/heads/eth-mainnet/geth-a" (publish the head of geth-a): see ` + Doc,
			is: []error{ErrNoToken, ErrDenied}, decided: true},
		{name: "no token, anonymous may", acl: fakeACL{notFound}, authz: fakeAuthz{allow: all}, enabled: true},
		{name: "lacks both", authz: fakeAuthz{}, hasToken: true, enabled: true,
			want: `consul token lacks service:write on "eth-mainnet" (register the nodes of eth-mainnet), key:write on ` +
				`"chainwarden/heads/eth-mainnet/geth-a" (publish the head of geth-a): see ` + Doc, is: []error{ErrDenied}, decided: true},
		{name: "unreachable", acl: fakeACL{errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")}, hasToken: true,
			want: "read the consul token: dial tcp"},
		{name: "authorize fails", authz: fakeAuthz{err: errors.New("eof")}, hasToken: true, enabled: true,
			want: "check the consul token's permissions: eof"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Check(context.Background(), tc.acl, tc.authz, tc.hasToken, needs)
			if res.Enabled != tc.enabled {
				t.Errorf("enabled %v, want %v", res.Enabled, tc.enabled)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			for _, target := range tc.is {
				if !errors.Is(err, target) {
					t.Errorf("%v is not %v", err, target)
				}
			}
			if Decided(err) != tc.decided {
				t.Errorf("decided %v, want %v", Decided(err), tc.decided)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	denied := fmt.Errorf("register geth-a: %w", consulapi.StatusError{Code: 403,
		Body: `Permission denied: token with AccessorID 'x' lacks permission 'service:write' on "eth-mainnet"`})
	if got := Explain(denied); !IsDenied(got) || !strings.HasSuffix(got.Error(), "see "+Doc) ||
		!strings.Contains(got.Error(), "lacks permission 'service:write'") {
		t.Fatalf("%v", got)
	}
	unknown := consulapi.StatusError{Code: 403, Body: "ACL not found"}
	if got := Explain(unknown); !errors.Is(got, ErrUnknownToken) {
		t.Fatalf("%v", got)
	}
	other := errors.New("connection refused")
	if Explain(other) != other || IsDenied(other) || Explain(nil) != nil {
		t.Fatal("other errors must come back as they are")
	}
}
