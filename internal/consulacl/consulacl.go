// Package consulacl tells whether a Consul ACL token can do what a chainwarden command needs, and says what is
// missing in words a person can act on: "consul token lacks service:write on "eth-mainnet" (register the nodes of
// eth-mainnet)" at start, instead of a wall of 403s later.
package consulacl

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/consulclient"
)

// Doc is where the policies and tokens are explained.
const Doc = "docs/PRODUCTION.md#acls"

// Need is one permission a command needs, and why.
type Need struct {
	Resource string // service, key, session, agent, node
	Segment  string // the name or key it applies to
	Access   string // read, write
	Why      string // what it is for, e.g. "register the nodes of eth-mainnet"
}

func (n Need) String() string { return fmt.Sprintf("%s:%s on %q", n.Resource, n.Access, n.Segment) }

// ACL is the one call of Consul's ACL API used: *consulapi.ACL satisfies it.
type ACL interface {
	TokenReadSelf(q *consulapi.QueryOptions) (*consulapi.ACLToken, *consulapi.QueryMeta, error)
}

// Authorizer answers permission questions: *consulclient.Conn satisfies it.
type Authorizer interface {
	Authorize(ctx context.Context, reqs []consulclient.Authorization) ([]consulclient.Authorization, error)
}

// Errors Check returns; each comes wrapped with what to do.
var (
	// ErrNoToken means no token was given while Consul has ACLs on.
	ErrNoToken = errors.New("no consul token given (set CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN) and consul has acls on")
	// ErrUnknownToken means Consul does not know the token given (wrong, deleted or expired).
	ErrUnknownToken = errors.New("consul does not know the token given (acl not found): wrong, deleted or expired")
	// ErrDenied means the token lacks a permission needed.
	ErrDenied = errors.New("consul token lacks")
)

// Result is what Check found.
type Result struct {
	Enabled  bool   // Consul has ACLs on
	Accessor string // the token's accessor ID (not a secret), "" without ACLs
}

// Check asks Consul whether the token (hasToken: one was given) has every permission in needs. With ACLs off it
// returns a Result with Enabled false and no error. A token Consul does not know, no token while ACLs are on, and
// missing permissions are errors that say so (errors.Is ErrUnknownToken, ErrNoToken, ErrDenied) and name every
// missing permission; an error that is none of those (Consul unreachable) means nothing was decided.
func Check(ctx context.Context, acl ACL, authz Authorizer, hasToken bool, needs []Need) (Result, error) {
	self, _, err := acl.TokenReadSelf((&consulapi.QueryOptions{}).WithContext(ctx))
	var res Result
	switch {
	case err == nil:
		res = Result{Enabled: true, Accessor: self.AccessorID}
	case isACLDisabled(err):
		return Result{}, nil
	case isACLNotFound(err) && !hasToken:
		// Consul's anonymous token: it may have been given rights on purpose; say what it lacks, if anything.
		res = Result{Enabled: true, Accessor: "anonymous"}
	case isACLNotFound(err):
		return Result{Enabled: true}, fmt.Errorf("%w: see %s", ErrUnknownToken, Doc)
	default:
		return Result{}, fmt.Errorf("read the consul token: %w", err)
	}
	if len(needs) == 0 {
		return res, nil
	}
	reqs := make([]consulclient.Authorization, len(needs))
	for i, n := range needs {
		reqs[i] = consulclient.Authorization{Resource: n.Resource, Segment: n.Segment, Access: n.Access}
	}
	got, err := authz.Authorize(ctx, reqs)
	if err != nil {
		return res, fmt.Errorf("check the consul token's permissions: %w", err)
	}
	var missing []string
	for i, a := range got {
		if !a.Allow {
			missing = append(missing, needs[i].String()+" ("+needs[i].Why+")")
		}
	}
	if len(missing) == 0 {
		return res, nil
	}
	return res, &DeniedError{Missing: missing, NoToken: !hasToken}
}

// DeniedError lists the permissions a token lacks; errors.Is it ErrDenied (and ErrNoToken when no token was given).
type DeniedError struct {
	Missing []string // e.g. `service:write on "eth-mainnet" (register the nodes of eth-mainnet)`
	NoToken bool
}

func (e *DeniedError) Error() string {
	msg := fmt.Sprintf("%s %s: see %s", ErrDenied, strings.Join(e.Missing, ", "), Doc)
	if e.NoToken {
		msg = ErrNoToken.Error() + "; " + msg
	}
	return msg
}

// Is makes errors.Is(err, ErrDenied) true, and errors.Is(err, ErrNoToken) when no token was given.
func (e *DeniedError) Is(target error) bool {
	return target == ErrDenied || (e.NoToken && target == ErrNoToken)
}

// Decided reports whether err from Check is Consul's answer (a refusal) rather than a failure to ask.
func Decided(err error) bool {
	return errors.Is(err, ErrNoToken) || errors.Is(err, ErrUnknownToken) || errors.Is(err, ErrDenied)
}

// Explain turns Consul's ACL refusals into errors that say what to do; other errors come back as they are.
// Consul's own message already names the permission ("Permission denied: token with AccessorID '...' lacks
// permission 'key:write' on "x"").
func Explain(err error) error {
	switch {
	case err == nil:
		return nil
	case isACLNotFound(err):
		return fmt.Errorf("%w (%w): see %s", ErrUnknownToken, err, Doc)
	case IsDenied(err):
		return fmt.Errorf("%w: see %s", err, Doc)
	}
	return err
}

// IsDenied reports whether err is Consul refusing a call for lack of a permission (HTTP 403).
func IsDenied(err error) bool {
	var se consulapi.StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusForbidden
	}
	return strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "ACL not found")
}

func isACLNotFound(err error) bool {
	return IsDenied(err) && strings.Contains(err.Error(), "ACL not found")
}

// isACLDisabled: Consul answers ACL calls with 401 "ACL support disabled" when ACLs are off.
func isACLDisabled(err error) bool {
	var se consulapi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
		return true
	}
	return strings.Contains(err.Error(), "ACL support disabled")
}
