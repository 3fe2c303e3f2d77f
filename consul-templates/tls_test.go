package consultemplates

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// tlsProvider is an https JSON-RPC server standing in for an external provider (Infura): its certificate is for
// "localhost" only, signed by a CA of the test's own; it records the SNI, Host and path of each request.
type tlsProvider struct {
	Srv    *httptest.Server
	CAFile string
	mu     sync.Mutex
	sni    string
	seen   seenRequest
}

func newTLSProvider(t *testing.T) *tlsProvider {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chainwarden test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsProvider{CAFile: filepath.Join(t.TempDir(), "ca.pem")}
	if err := os.WriteFile(p.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.seen = seenRequest{Path: r.URL.Path, Host: r.Host}
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"jsonrpc":"2.0","id":1,"result":"provider"}`)
	}))
	p.Srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			p.mu.Lock()
			p.sni = h.ServerName
			p.mu.Unlock()
			return nil, nil
		},
	}
	p.Srv.StartTLS()
	t.Cleanup(p.Srv.Close)
	return p
}

func (p *tlsProvider) last() (sni string, seen seenRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sni, p.seen
}

// TestHTTPSFallback: with every node critical, both proxies reach an https provider with SNI and Host set to its
// name, the key from the environment in the path, and the certificate verified: a provider whose certificate does
// not name the host it is reached by is refused.
func TestHTTPSFallback(t *testing.T) {
	consul := testenv.StartConsul(t)
	provider := newTLSProvider(t)
	port := provider.Srv.Listener.Addr().(*net.TCPAddr).Port
	dead := newFakeNode(t, "dead")
	register(t, consul, "eth-mainnet", "geth-m", "127.0.0.1", dead.port(), "critical", nil)
	register(t, consul, "eth-wrong", "geth-w", "127.0.0.1", dead.port(), "critical", nil)
	kv := map[string]string{
		"chainwarden/fallback/eth-mainnet": fmt.Sprintf("https://localhost:%d/v3/{key}", port),
		// Reached by IP: the certificate names only "localhost", so verification must fail.
		"chainwarden/fallback/eth-wrong": fmt.Sprintf("https://127.0.0.1:%d/v3/", port),
	}
	for k, v := range kv {
		if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul, "CHAINWARDEN_PROXY_CA_FILE="+provider.CAFile,
			"CHAINWARDEN_FALLBACK_KEY_ETH_MAINNET=s3cret-key")
		p.waitConfig(t, "fallbacks", func(conf string) error {
			if strings.Count(conf, "fallback: ok") < 2 {
				return fmt.Errorf("fallbacks not rendered yet")
			}
			return nil
		})
		if fi, err := os.Stat(p.Live); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: the rendered config holding the key is not private: %v %v", kind, fi.Mode(), err)
		}
		testenv.Eventually(t, 10*time.Second, kind+" via the https provider", func() error {
			got := responders(t, p.URL+"/eth-mainnet", 3)
			return only(got, "provider")
		})
		sni, seen := provider.last()
		if sni != "localhost" || seen.Host != "localhost" || seen.Path != "/v3/s3cret-key" {
			t.Errorf("%s: provider saw SNI %q Host %q path %q; want localhost, localhost, /v3/s3cret-key", kind, sni, seen.Host, seen.Path)
		}
		got := responders(t, p.URL+"/eth-wrong", 3)
		if got["error: no such chainwarden service; use /<service>"] != 0 {
			t.Errorf("%s: eth-wrong not routed: %v", kind, got)
		}
		if got["provider"] != 0 {
			t.Errorf("%s: reached a provider whose certificate does not match: %v", kind, got)
		}
	}
}
