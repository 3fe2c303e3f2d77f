package consultemplates

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// privateIP is what consul-template's sockaddr "GetPrivateIP" picks on this host, by the same rule: the first
// private (RFC 1918 / RFC 6598 / ULA) address of an up interface. Here it is often IPv6 (fd00::2).
func privateIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.IsPrivate() {
			return n.IP.String()
		}
	}
	return ""
}

// With no CHAINWARDEN_PROXY_LISTEN the proxies listen on the host's private address, port 8545: an IPv6 address
// must be bracketed where it meets the port, or `nginx -t` rejects the render and it never goes live. Node
// addresses in IPv6 are bracketed in the server lines too.
func TestDefaultListenOnThePrivateAddress(t *testing.T) {
	consul := testenv.StartConsul(t)
	register(t, consul, service, "geth-v6", "::1", 8545, "passing", nil)
	ip := privateIP(t)
	t.Logf("private address: %q", ip)
	want := "127.0.0.1:8545"
	if ip != "" {
		want = net.JoinHostPort(ip, "8545")
	}
	for _, kind := range proxyKinds {
		t.Run(kind, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), kind)
			copyDir(t, kind, dir)
			if err := os.MkdirAll(filepath.Join(dir, "staging"), 0o700); err != nil {
				t.Fatal(err)
			}
			env := []string{"NGINX=" + testenv.Bin(t, "nginx"), "CHAINWARDEN_NGINX_PREFIX=" + testenv.NginxPrefix(t),
				"HAPROXY=" + testenv.Bin(t, "haproxy"), "CHAINWARDEN_HAPROXY_PIDFILE=" + filepath.Join(dir, "haproxy.pid")}
			out := testenv.RunConsulTemplateOnce(t, dir, "consul-template.hcl", consul.Addr, env)
			live := map[string]string{"nginx": "rpc-proxy.conf", "haproxy": "rpc-proxy.cfg"}[kind]
			b, err := os.ReadFile(filepath.Join(dir, live))
			if err != nil { // apply.sh keeps a render the proxy rejects out of the live config
				rejected, _ := os.ReadFile(filepath.Join(dir, "staging", "rejected."+strings.TrimPrefix(filepath.Ext(live), ".")))
				t.Fatalf("the render was rejected: %v\n%s\n%s", err, out, rejected)
			}
			conf := string(b)
			if !strings.Contains(conf, "listen "+want+";") && !strings.Contains(conf, "bind "+want+"\n") {
				t.Fatalf("no listen on %s in:\n%s", want, conf)
			}
			if !strings.Contains(conf, "[::1]:8545") {
				t.Fatalf("the IPv6 node is not bracketed:\n%s", conf)
			}
		})
	}
}
