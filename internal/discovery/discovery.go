// Package discovery finds the chain nodes Nomad runs on the local Nomad client: every running task whose meta
// declares it to chainwarden (chainwarden_kind, chainwarden_service, ...) becomes a nodespec.Node, with the address
// and port of its RPC port label taken from the allocation. A Watcher follows the client's allocations with
// blocking queries and hands the agent the full current set whenever it changes.
package discovery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// Task meta keys a job spec sets on a chain node's task (group and job meta are inherited, as Nomad does).
const (
	MetaKind    = "chainwarden_kind"     // ethereum | cometbft | chainlink (required: marks the task)
	MetaService = "chainwarden_service"  // Consul service name (required)
	MetaChainID = "chainwarden_chain_id" // EVM chain id (required for ethereum)
	MetaNetwork = "chainwarden_network"  // network name; the chain id for cometbft (required there)
	MetaRPCPort = "chainwarden_rpc_port" // port label of the RPC (default "rpc")
	MetaWSPort  = "chainwarden_ws_port"  // port label of the WebSocket RPC (optional; heads by push, tag ws_port=N)
	MetaClient  = "chainwarden_client"   // geth, openethereum, cometbft, irita, chainlink, ...
	MetaRole    = "chainwarden_role"     // free text: validator, active-standby, archive, ...
	MetaScheme  = "chainwarden_rpc_scheme"
	MetaWarnLag = "chainwarden_warn_lag"
	MetaMaxLag  = "chainwarden_max_lag"
	// MetaMinPeers and MetaMaxBlockAge override the agent's per-kind defaults (a one-node dev chain has 0 peers).
	MetaMinPeers    = "chainwarden_min_peers"
	MetaMaxBlockAge = "chainwarden_max_block_age"
	// Lag in time, finality and the chain's pace (durations, as in the agent's node blocks).
	MetaWarnBehind         = "chainwarden_warn_behind"
	MetaMaxBehind          = "chainwarden_max_behind"
	MetaMaxFinalizedBehind = "chainwarden_max_finalized_behind"
	MetaMinBlockTime       = "chainwarden_min_block_time"
)

// DefaultRPCPortLabel is used when a task sets no chainwarden_rpc_port.
const DefaultRPCPortLabel = "rpc"

// API is the part of Nomad's HTTP API discovery uses: the agent's own identity and a client node's allocations.
type API interface {
	Self() (*nomadapi.AgentSelf, error)
	Allocations(nodeID string, q *nomadapi.QueryOptions) ([]*nomadapi.Allocation, *nomadapi.QueryMeta, error)
}

// Connect returns the API of the Nomad agent at address ("" = NOMAD_ADDR, else http://127.0.0.1:4646); NOMAD_TOKEN,
// NOMAD_CACERT and the other NOMAD_* variables apply.
func Connect(address string) (API, error) {
	nc := nomadapi.DefaultConfig()
	if address != "" {
		nc.Address = address
	}
	c, err := nomadapi.NewClient(nc)
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	return Client(c), nil
}

// Client adapts Nomad's API client to API.
func Client(c *nomadapi.Client) API { return nomadClient{c} }

type nomadClient struct{ c *nomadapi.Client }

func (n nomadClient) Self() (*nomadapi.AgentSelf, error) { return n.c.Agent().Self() }
func (n nomadClient) Allocations(nodeID string, q *nomadapi.QueryOptions) ([]*nomadapi.Allocation, *nomadapi.QueryMeta, error) {
	return n.c.Nodes().Allocations(nodeID, q)
}

// Watcher follows the allocations of one Nomad client node.
type Watcher struct {
	api    API
	nodeID string
	log    hclog.Logger
	clock  clock.Clock

	// WaitTime bounds each blocking query; MinBackoff/MaxBackoff pace retries after errors.
	WaitTime   time.Duration
	MinBackoff time.Duration
	MaxBackoff time.Duration

	warned map[string]string // alloc/task -> last problem logged, so a bad task is reported once
}

// New returns a watcher of the allocations on the Nomad client nodeID; an empty nodeID means the client of the
// agent api talks to (found from its /v1/agent/self). A nil clock is the wall clock.
func New(api API, nodeID string, log hclog.Logger, clk clock.Clock) *Watcher {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Watcher{
		api: api, nodeID: nodeID, log: log, clock: clock.OrReal(clk),
		WaitTime: 5 * time.Minute, MinBackoff: time.Second, MaxBackoff: 30 * time.Second,
		warned: map[string]string{},
	}
}

// NodeID returns the Nomad client node watched ("" until Run found it).
func (w *Watcher) NodeID() string { return w.nodeID }

// Run calls update with the full set of chain nodes on the client at first and then every time the set changes,
// until ctx is done. While Nomad can't be reached it keeps the last set (the containers keep running) and retries
// with capped backoff.
func (w *Watcher) Run(ctx context.Context, update func([]nodespec.Node)) {
	bo := backoff.New(w.MinBackoff, w.MaxBackoff)
	retry := func(what string, err error) bool {
		wait := bo.Next()
		w.log.Warn("nomad "+what+" failed, retrying", "error", err, "in", wait)
		return clock.Sleep(ctx, w.clock, wait) == nil
	}
	for w.nodeID == "" {
		id, err := w.localNodeID(ctx)
		if err == nil {
			w.nodeID = id
			w.log.Info("watching nomad allocations", "node_id", id)
			break
		}
		if ctx.Err() != nil || !retry("agent self", err) {
			return
		}
	}
	bo.Reset()
	var index uint64
	var last []nodespec.Node
	first := true
	for ctx.Err() == nil {
		nodes, next, err := w.Poll(ctx, index)
		if err != nil {
			if ctx.Err() != nil || !retry("allocations query", err) {
				return
			}
			continue
		}
		bo.Reset()
		// Reset when the index goes backwards (a restored or new server), as Consul and Nomad advise.
		if next < index {
			next = 0
		}
		index = next
		if first || !reflect.DeepEqual(nodes, last) {
			first = false
			last = nodes
			w.log.Debug("chain nodes on this nomad client changed", "count", len(nodes))
			update(slices.Clone(nodes))
		}
	}
}

// localNodeID asks the agent the API client talks to for its client node ID.
func (w *Watcher) localNodeID(ctx context.Context) (string, error) {
	type res struct {
		self *nomadapi.AgentSelf
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := w.api.Self()
		ch <- res{s, err}
	}()
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("read nomad agent self: %w", r.err)
		}
		id := r.self.Stats["client"]["node_id"]
		if id == "" {
			return "", errors.New("the nomad agent is not a client (no client node_id in /v1/agent/self)")
		}
		return id, nil
	}
}

// Poll runs one blocking query for the client's allocations (returning at once when index is 0) and returns the
// chain nodes among them and the index for the next query.
func (w *Watcher) Poll(ctx context.Context, index uint64) ([]nodespec.Node, uint64, error) {
	q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: w.WaitTime}).WithContext(ctx)
	allocs, meta, err := w.api.Allocations(w.nodeID, q)
	if err != nil {
		return nil, index, fmt.Errorf("list allocations of nomad node %s: %w", w.nodeID, err)
	}
	return w.nodes(allocs), meta.LastIndex, nil
}

// nodes turns the running chainwarden tasks of allocs into nodes, one per name (the newest allocation wins while an
// old one is still stopping), sorted by name.
func (w *Watcher) nodes(allocs []*nomadapi.Allocation) []nodespec.Node {
	sort.Slice(allocs, func(i, j int) bool { return allocs[i].CreateIndex < allocs[j].CreateIndex })
	byName := map[string]nodespec.Node{}
	seen := map[string]bool{}
	for _, a := range allocs {
		for _, n := range w.allocNodes(a, seen) {
			byName[n.Name] = n
		}
	}
	// Forget warnings about allocations that are gone.
	for k := range w.warned {
		if !seen[k] {
			delete(w.warned, k)
		}
	}
	out := make([]nodespec.Node, 0, len(byName))
	for _, n := range byName {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (w *Watcher) allocNodes(a *nomadapi.Allocation, seen map[string]bool) []nodespec.Node {
	if a.Job == nil || a.DesiredStatus != nomadapi.AllocDesiredStatusRun || a.ClientStatus != nomadapi.AllocClientStatusRunning {
		return nil
	}
	var tg *nomadapi.TaskGroup
	for _, g := range a.Job.TaskGroups {
		if g.Name != nil && *g.Name == a.TaskGroup {
			tg = g
		}
	}
	if tg == nil {
		return nil
	}
	var chainTasks []*nomadapi.Task
	for _, t := range tg.Tasks {
		if mergedMeta(a.Job, tg, t)[MetaKind] != "" {
			chainTasks = append(chainTasks, t)
		}
	}
	var out []nodespec.Node
	for _, t := range chainTasks {
		key := a.ID + "/" + t.Name
		seen[key] = true
		if st := a.TaskStates[t.Name]; st == nil || st.State != "running" {
			continue
		}
		n, err := taskNode(a, tg, t, len(chainTasks) > 1)
		if err == nil {
			err = n.Normalize().Err()
		}
		if err != nil {
			if w.warned[key] != err.Error() {
				w.warned[key] = err.Error()
				w.log.Warn("nomad task has chainwarden meta but is not a valid chain node", "alloc", a.ID, "task", t.Name, "error", err)
			}
			continue
		}
		out = append(out, n)
	}
	return out
}

// mergedMeta is the task's meta over its group's over its job's, as Nomad merges them.
func mergedMeta(job *nomadapi.Job, tg *nomadapi.TaskGroup, t *nomadapi.Task) map[string]string {
	m := map[string]string{}
	for _, src := range []map[string]string{job.Meta, tg.Meta, t.Meta} {
		for k, v := range src {
			m[k] = v
		}
	}
	return m
}

// taskNode builds the node of one chain task of a running allocation.
func taskNode(a *nomadapi.Allocation, tg *nomadapi.TaskGroup, t *nomadapi.Task, multi bool) (nodespec.Node, error) {
	meta := mergedMeta(a.Job, tg, t)
	env := allocEnv(a, t.Name)
	for k, v := range meta {
		meta[k] = interpolate(v, env)
	}
	label := meta[MetaRPCPort]
	if label == "" {
		label = DefaultRPCPortLabel
	}
	ip, port, ok := allocPort(a, t.Name, label)
	if !ok {
		return nodespec.Node{}, fmt.Errorf("no port labelled %q in the allocation (set %s to the RPC port's label)", label, MetaRPCPort)
	}
	scheme := meta[MetaScheme]
	if scheme == "" {
		scheme = "http"
	}
	n := nodespec.Node{
		Name:    NodeName(a, t.Name, multi),
		Kind:    probe.Kind(meta[MetaKind]),
		RPC:     scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(port)),
		Service: meta[MetaService],
		Address: ip,
		Port:    port,
		Client:  meta[MetaClient],
		Role:    meta[MetaRole],
		Network: meta[MetaNetwork],

		MaxBlockAge:        meta[MetaMaxBlockAge],
		WarnBehind:         meta[MetaWarnBehind],
		MaxBehind:          meta[MetaMaxBehind],
		MaxFinalizedBehind: meta[MetaMaxFinalizedBehind],
		MinBlockTime:       meta[MetaMinBlockTime],
		Source:             nodespec.SourceNomad,
		AllocID:            a.ID,
		Task:               t.Name,
		Deploying:          a.DeploymentID != "" && (a.DeploymentStatus == nil || a.DeploymentStatus.Healthy == nil || !*a.DeploymentStatus.Healthy),
	}
	if wsLabel := meta[MetaWSPort]; wsLabel != "" {
		if wsIP, wsPort, ok := allocPort(a, t.Name, wsLabel); ok {
			n.Tags = append(n.Tags, "ws_port="+strconv.Itoa(wsPort))
			n.WS = wsURL(scheme, wsIP, wsPort, n.Kind)
		}
	}
	var err error
	if n.ChainID, err = metaUint(meta, MetaChainID); err != nil {
		return n, err
	}
	if n.WarnLag, err = metaUint(meta, MetaWarnLag); err != nil {
		return n, err
	}
	if n.MaxLag, err = metaUint(meta, MetaMaxLag); err != nil {
		return n, err
	}
	if n.MinPeers, err = metaUint(meta, MetaMinPeers); err != nil {
		return n, err
	}
	return n, nil
}

// wsURL is the WebSocket endpoint of a node's port, from which its new heads arrive by push: ws://ADDR:PORT, wss
// when its RPC is https, and /websocket for CometBFT (whose WebSocket is on its RPC port).
func wsURL(rpcScheme, ip string, port int, kind probe.Kind) string {
	scheme := "ws"
	if rpcScheme == "https" {
		scheme = "wss"
	}
	u := scheme + "://" + net.JoinHostPort(ip, strconv.Itoa(port))
	if kind == probe.CometBFT {
		u += "/websocket"
	}
	return u
}

func metaUint(meta map[string]string, key string) (*uint64, error) {
	s := strings.TrimSpace(meta[key])
	if s == "" {
		return nil, nil
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return nil, fmt.Errorf("meta %s: %q is not a non-negative integer", key, s)
	}
	return &v, nil
}

// allocPort finds the host address and port of a port label: group network ports first (the modern form), then
// the group's and the task's network resources.
func allocPort(a *nomadapi.Allocation, task, label string) (string, int, bool) {
	if a.AllocatedResources == nil {
		return "", 0, false
	}
	for _, p := range a.AllocatedResources.Shared.Ports {
		if p.Label == label && p.Value > 0 {
			return p.HostIP, p.Value, true
		}
	}
	nets := a.AllocatedResources.Shared.Networks
	if tr := a.AllocatedResources.Tasks[task]; tr != nil {
		nets = append(nets, tr.Networks...)
	}
	for _, nw := range nets {
		for _, ports := range [][]nomadapi.Port{nw.ReservedPorts, nw.DynamicPorts} {
			for _, p := range ports {
				if p.Label == label && p.Value > 0 {
					return nw.IP, p.Value, true
				}
			}
		}
	}
	return "", 0, false
}

// allocEnv holds the runtime variables a meta value may use (Nomad interpolates meta only inside the task).
func allocEnv(a *nomadapi.Allocation, task string) map[string]string {
	ns := a.Namespace
	if ns == "" {
		ns = "default"
	}
	return map[string]string{
		"NOMAD_ALLOC_ID":    a.ID,
		"NOMAD_ALLOC_NAME":  a.Name,
		"NOMAD_ALLOC_INDEX": strconv.Itoa(allocIndex(a.Name)),
		"NOMAD_JOB_ID":      a.JobID,
		"NOMAD_JOB_NAME":    deref(a.Job.Name),
		"NOMAD_GROUP_NAME":  a.TaskGroup,
		"NOMAD_TASK_NAME":   task,
		"NOMAD_NAMESPACE":   ns,
		"node.unique.name":  a.NodeName,
		"node.unique.id":    a.NodeID,
	}
}

var interpolation = regexp.MustCompile(`\$\{([A-Za-z0-9_.\-]+)\}`)

func interpolate(s string, env map[string]string) string {
	if !strings.Contains(s, "${") {
		return s
	}
	return interpolation.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// allocIndex parses the index out of an allocation name "job.group[3]".
func allocIndex(name string) int {
	i := strings.LastIndex(name, "[")
	if i < 0 || !strings.HasSuffix(name, "]") {
		return 0
	}
	n, err := strconv.Atoi(name[i+1 : len(name)-1])
	if err != nil {
		return 0
	}
	return n
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// NodeName is the name a chain task is registered under: <job>-<group>-<alloc index>, with -<task> appended when
// the group runs more than one chain task and the namespace prefixed when it isn't "default". It stays the same
// when Nomad restarts or replaces the allocation (the index is kept), so the Consul service ID, its check history and
// the peers rendered from it (IRITA's persistent_peers) survive a restart. It is DNS-safe: lowercase letters,
// digits and dashes, at most 63 characters (longer names keep a hash of the full one).
func NodeName(a *nomadapi.Allocation, task string, withTask bool) string {
	parts := []string{a.JobID, a.TaskGroup, strconv.Itoa(allocIndex(a.Name))}
	if withTask {
		parts = append(parts, task)
	}
	if a.Namespace != "" && a.Namespace != "default" {
		parts = append([]string{a.Namespace}, parts...)
	}
	return dnsName(strings.Join(parts, "-"))
}

var notDNS = regexp.MustCompile(`[^a-z0-9]+`)

func dnsName(s string) string {
	full := s
	s = strings.Trim(notDNS.ReplaceAllString(strings.ToLower(s), "-"), "-")
	if s == "" {
		s = "node"
	}
	if len(s) > 63 {
		sum := sha256.Sum256([]byte(full))
		s = strings.TrimRight(s[:54], "-") + "-" + hex.EncodeToString(sum[:])[:8]
	}
	return s
}

// ChainTasks names the tasks of a group that are chain nodes (chainwarden_kind in their merged meta), in the
// group's order: what NodeName is called with, withTask when there is more than one.
func ChainTasks(job *nomadapi.Job, tg *nomadapi.TaskGroup) []string {
	var out []string
	for _, t := range tg.Tasks {
		if mergedMeta(job, tg, t)[MetaKind] != "" {
			out = append(out, t.Name)
		}
	}
	return out
}
