package probe

import (
	"context"
	"errors"
	"syscall"
	"testing"
)

func TestChainlinkRefusedIsECONNREFUSED(t *testing.T) {
	r := Run(context.Background(), NewHTTPClient(), Target{Kind: "chainlink", URL: "http://127.0.0.1:1"})
	if !errors.Is(r.Err, syscall.ECONNREFUSED) {
		t.Fatalf("a refused connection must stay recognisable (errors.Is ECONNREFUSED) for the standby verdict: %v", r.Err)
	}
}
