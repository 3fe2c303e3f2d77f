package probe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ErrTooLarge is returned when an answer is larger than MaxResponseBytes.
var ErrTooLarge = errors.New("response larger than the probe limit")

func errUnknownKind(kind Kind) error { return fmt.Errorf("no prober for kind %q", kind) }

// NewHTTPClient returns the client every prober shares: keep-alive connections to many nodes, and a transport that
// cuts every response body at MaxResponseBytes so a huge or endless answer costs bounded memory.
func NewHTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy:               nil, // node RPC is never sent through HTTP(S)_PROXY
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{Transport: capTransport{tr}}
}

type capTransport struct{ next http.RoundTripper }

func (c capTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &capBody{rc: resp.Body, left: MaxResponseBytes}
	return resp, nil
}

// capBody reads at most left bytes and then fails with ErrTooLarge.
type capBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *capBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte means the body really is over the limit.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, ErrTooLarge
		}
		if err == nil || err == io.EOF {
			return 0, io.EOF
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *capBody) Close() error { return b.rc.Close() }
