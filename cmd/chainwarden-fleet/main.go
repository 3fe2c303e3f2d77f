// Command chainwarden-fleet runs the fleet of internal/cluster on this machine until Ctrl-C (`make fleet-demo`):
// three Consul servers, chain hosts (Consul client agent, geth Clique sealer, CometBFT validator, the chainwarden
// agent), a proxy host (consul-template, nginx, HAProxy), each in a network namespace of its own. It forwards ports
// of this machine's loopback to the Consul UI of a server and to both proxies, and prints their URLs. It needs root
// (network namespaces). Ctrl-C stops everything it started and removes every namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/cluster"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("chainwarden-fleet", flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join(os.TempDir(), "chainwarden-fleet"), "where the hosts' configs, data and logs go (emptied first)")
	root := fs.String("root", ".", "the chainwarden repository (packer/files and consul-templates are read from it)")
	agentBin := fs.String("agent", "bin/chainwarden", "the chainwarden binary the chain hosts run")
	chains := fs.Int("chain-hosts", 4, "chain hosts (3 to 9)")
	uiAddr := fs.String("ui", "127.0.0.1:8500", "this machine's address forwarded to server1's Consul HTTP API and UI")
	nomadAddr := fs.String("nomad-ui", "127.0.0.1:4646", "this machine's address forwarded to server1's Nomad HTTP API and UI")
	nginxAddr := fs.String("nginx", "127.0.0.1:8545", "this machine's address forwarded to the nginx proxy")
	haproxyAddr := fs.String("haproxy", "127.0.0.1:8546", "this machine's address forwarded to the HAProxy proxy")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "fleet", Level: hclog.Info})
	bin, err := filepath.Abs(*agentBin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		log.Error("no chainwarden binary: run `make build` first", "agent", *agentBin, "error", err)
		return 1
	}
	if err := os.RemoveAll(*dir); err != nil {
		log.Error("empty the work dir", "dir", *dir, "error", err)
		return 1
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Error("make the work dir", "dir", *dir, "error", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	f, err := cluster.Start(ctx, cluster.Options{Dir: *dir, Root: *root, AgentBin: bin, ChainHosts: *chains, Log: log})
	if f != nil {
		defer func() {
			log.Info("stopping the fleet")
			if err := f.Close(); err != nil {
				log.Error("stop", "error", err)
			}
		}()
	}
	if err != nil {
		log.Error("start the fleet", "error", err)
		return 1
	}
	for _, fw := range []struct {
		what, local string
		host        *cluster.Host
		target      string
	}{
		{"Consul UI (server1)", *uiAddr, f.Servers[0], "127.0.0.1:8500"},
		{"Nomad UI (server1)", *nomadAddr, f.Servers[0], "127.0.0.1:4646"},
		{"nginx RPC proxy", *nginxAddr, f.Proxy, f.NginxURL[len("http://"):]},
		{"HAProxy RPC proxy", *haproxyAddr, f.Proxy, f.HAProxyURL[len("http://"):]},
	} {
		l, err := net.Listen("tcp", fw.local)
		if err != nil {
			log.Error("forward", "what", fw.what, "error", err)
			return 1
		}
		defer l.Close()
		go fw.host.Forward(l, fw.target)
		fmt.Printf("%-22s http://%s  (-> %s %s)\n", fw.what, l.Addr(), fw.host.Name, fw.target)
	}
	fmt.Printf("services %s and %s: e.g. curl -s -H 'Content-Type: application/json' -XPOST -d '{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}' http://%s/%s\n",
		cluster.EthService, cluster.CometService, *nginxAddr, cluster.EthService)
	fmt.Printf("Consul ACLs are on (deny by default): the UI's management token is in %s (removed at Ctrl-C)\n", f.ManagementTokenFile())
	fmt.Printf("hosts' configs and logs under %s; namespaces %s-*: e.g. ip netns exec %s-chain1 ...\nCtrl-C stops the fleet.\n",
		*dir, f.Prefix(), f.Prefix())
	<-ctx.Done()
	return 0
}
