// Package ec2test is an in-process EC2 Query-API server for tests: volumes, snapshots, attachments, tags and the
// instances DescribeInstances lists (what Consul's cloud auto-join reads), with their state transitions
// (creating -> available, attaching -> attached, detaching -> detached, pending -> completed with progress, volume
// modifications modifying -> optimizing -> completed), the
// real form-encoded request and XML response wire format (2016-11-15), MaxResults/NextToken pagination,
// ClientToken idempotency, per-region state (the region is read from the SigV4 credential scope, so a client of
// another region sees nothing of this one), and injectable AWS errors such as RequestLimitExceeded. The real
// aws-sdk-go-v2 EC2 client, its paginators and its waiters talk to it through its BaseEndpoint option.
//
// Transitions happen on the server's clock: a state is due once its delay has passed, and the next request (or
// Volumes/Snapshots call) sees it. With a fake clock a test moves every volume and snapshot along by hand.
package ec2test

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chainwarden/chainwarden/internal/clock"
)

// Namespace is the XML namespace of EC2 API version 2016-11-15, the one the SDK speaks.
const Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// Account is the owner id of everything the server creates.
const Account = "123456789012"

// Tag is a key/value tag.
type Tag struct{ Key, Value string }

// Attachment is a volume's attachment to an instance.
type Attachment struct {
	InstanceID string
	Device     string
	State      string // attaching, attached, detaching
	Time       time.Time

	attachedAt time.Time // attaching -> attached when the clock reaches it
	detachedAt time.Time // detaching -> gone when the clock reaches it
}

// Volume is an EBS volume as the server holds it.
type Volume struct {
	ID          string
	Region      string
	AZ          string
	Size        int32
	SnapshotID  string
	State       string // creating, available, in-use
	Type        string
	IOPS        int32
	Throughput  int32
	Encrypted   bool
	KMSKeyID    string
	Created     time.Time
	Tags        []Tag
	Attachment  *Attachment
	ClientToken string
	// Modification is the volume's latest ModifyVolume (what DescribeVolumesModifications shows); nil: never
	// modified.
	Modification *Modification

	availableAt time.Time // creating -> available when the clock reaches it; zero: only by hand
}

// Snapshot is an EBS snapshot as the server holds it.
type Snapshot struct {
	ID          string
	Region      string
	VolumeID    string
	VolumeSize  int32
	State       string // pending, completed, error
	Started     time.Time
	Description string
	Encrypted   bool
	Owner       string
	Tags        []Tag

	completedAt time.Time // pending -> completed when the clock reaches it; zero: only by hand
}

// Delays are how long the state transitions take.
type Delays struct {
	Create   time.Duration // volume creating -> available
	Attach   time.Duration // attaching -> attached
	Snapshot time.Duration // pending -> completed; progress grows linearly meanwhile
	Modify   time.Duration // a volume modification modifying -> optimizing (the new size is in effect from then)
	Optimize time.Duration // a volume modification optimizing -> completed
	Detach   time.Duration // detaching -> detached
}

// Instance is an EC2 instance as the server knows it: enough for AttachVolume (its AZ) and for DescribeInstances
// (Consul's cloud auto-join reads the private address of the running instances with a tag).
type Instance struct {
	ID        string
	AZ        string
	PrivateIP string
	State     string // pending, running, stopped, ...; default running
	Tags      []Tag
}

// Server is the fake EC2 endpoint. Its exported fields may be set before the first request.
type Server struct {
	URL string

	// OnAttach is called (without the server lock held, before the answer of the request that first sees the
	// attachment "attached" is sent), as udev would create the device node then. Tests use it to point a by-id
	// link at a loop device.
	OnAttach func(volumeID, instanceID, device string)
	// OnModify is called like OnAttach when a size modification reaches "optimizing", the moment AWS makes the
	// new size visible to the instance: tests grow the loop device standing in for the volume here.
	OnModify func(volumeID string, sizeGiB int32)
	// OnDetach is called like OnAttach when a detachment is done (udev removes the device then).
	OnDetach func(volumeID, instanceID string)
	// Clock times the state transitions and stamps creation times; nil is the wall clock.
	Clock clock.Clock

	srv       *httptest.Server
	mu        sync.Mutex
	delays    Delays
	volumes   map[string]*Volume
	snapshots map[string]*Snapshot
	instances map[string]*Instance
	tokens    map[string]string // region/clientToken -> volume id
	faults    map[string][]string
	calls     map[string]int
	requests  []string
}

// New starts a server on a loopback port with the given transition delays.
func New(d Delays) *Server { return NewOn(nil, d) }

// NewOn is New serving on l (e.g. a listener in a test's network namespace); nil is a loopback port.
func NewOn(l net.Listener, d Delays) *Server {
	s := &Server{
		delays:    d,
		volumes:   map[string]*Volume{},
		snapshots: map[string]*Snapshot{},
		instances: map[string]*Instance{},
		tokens:    map[string]string{},
		faults:    map[string][]string{},
		calls:     map[string]int{},
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
	if l != nil {
		s.srv.Listener.Close()
		s.srv.Listener = l
	}
	s.srv.Start()
	s.URL = s.srv.URL
	return s
}

// SetDelays changes how long the transitions that start from now on take.
func (s *Server) SetDelays(d Delays) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delays = d
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

func (s *Server) now() time.Time { return clock.OrReal(s.Clock).Now() }

// settle makes every transition that is due by now; s.mu is held. It returns the OnAttach calls to make once the
// lock is released.
func (s *Server) settle() (hooks []func()) {
	now := s.now()
	for _, v := range s.volumes {
		if v.State == "creating" && !v.availableAt.IsZero() && !now.Before(v.availableAt) {
			v.State = "available"
		}
		if a := v.Attachment; a != nil && a.State == "attaching" && !now.Before(a.attachedAt) {
			a.State = "attached"
			if hook := s.OnAttach; hook != nil {
				id, inst, dev := v.ID, a.InstanceID, a.Device
				hooks = append(hooks, func() { hook(id, inst, dev) })
			}
		}
		if a := v.Attachment; a != nil && a.State == "detaching" && !now.Before(a.detachedAt) {
			v.Attachment, v.State = nil, "available"
			if hook := s.OnDetach; hook != nil {
				id, inst := v.ID, a.InstanceID
				hooks = append(hooks, func() { hook(id, inst) })
			}
		}
		hooks = append(hooks, s.settleModification(v, now)...)
	}
	for _, sn := range s.snapshots {
		if sn.State == "pending" && !sn.completedAt.IsZero() && !now.Before(sn.completedAt) {
			sn.State = "completed"
		}
	}
	return hooks
}

func runHooks(hooks []func()) {
	for _, h := range hooks {
		h()
	}
}

// AddInstance makes a running instance known in an availability zone (the region is the AZ without its letter).
func (s *Server) AddInstance(instanceID, az string) { s.PutInstance(Instance{ID: instanceID, AZ: az}) }

// PutInstance stores an instance as given (State defaults to running).
func (s *Server) PutInstance(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.State == "" {
		in.State = "running"
	}
	in.Tags = append([]Tag(nil), in.Tags...)
	s.instances[in.ID] = &in
}

// PutVolume stores a volume as given (an id is generated when empty) and returns its id.
func (s *Server) PutVolume(v Volume) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.ID == "" {
		v.ID = newID("vol")
	}
	if v.Region == "" {
		v.Region = regionOf(v.AZ)
	}
	if v.State == "" {
		v.State = "available"
	}
	if v.Created.IsZero() {
		v.Created = s.now()
	}
	if v.Type == "" {
		v.Type = "gp3"
	}
	s.volumes[v.ID] = &v
	return v.ID
}

// PutSnapshot stores a snapshot as given (an id is generated when empty) and returns its id.
func (s *Server) PutSnapshot(sn Snapshot) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn.ID == "" {
		sn.ID = newID("snap")
	}
	if sn.State == "" {
		sn.State = "completed"
	}
	if sn.Owner == "" {
		sn.Owner = Account
	}
	if sn.Started.IsZero() {
		sn.Started = s.now()
	}
	s.snapshots[sn.ID] = &sn
	return sn.ID
}

// Volumes returns copies of every volume, oldest first.
func (s *Server) Volumes() []Volume {
	s.mu.Lock()
	hooks := s.settle()
	var out []Volume
	for _, v := range s.volumes {
		c := *v
		if v.Attachment != nil {
			a := *v.Attachment
			c.Attachment = &a
		}
		c.Tags = append([]Tag(nil), v.Tags...)
		if v.Modification != nil {
			m := *v.Modification
			c.Modification = &m
		}
		out = append(out, c)
	}
	s.mu.Unlock()
	runHooks(hooks)
	slices.SortFunc(out, func(a, b Volume) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID)) })
	return out
}

// Snapshots returns copies of every snapshot, oldest first.
func (s *Server) Snapshots() []Snapshot {
	s.mu.Lock()
	hooks := s.settle()
	var out []Snapshot
	for _, sn := range s.snapshots {
		c := *sn
		c.Tags = append([]Tag(nil), sn.Tags...)
		out = append(out, c)
	}
	s.mu.Unlock()
	runHooks(hooks)
	slices.SortFunc(out, func(a, b Snapshot) int { return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID)) })
	return out
}

// Detach detaches a volume at once (as a terminated instance would).
func (s *Server) Detach(volumeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.volumes[volumeID]; v != nil {
		v.Attachment = nil
		v.State = "available"
	}
}

// Fail makes the next n calls of action fail with the AWS error code (RequestLimitExceeded, InternalError,
// UnauthorizedOperation, ...).
func (s *Server) Fail(action, code string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		s.faults[action] = append(s.faults[action], code)
	}
}

// Calls returns how many requests of action arrived (including failed ones).
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Requests returns the raw form bodies of every request received, in order (to check nothing secret is sent).
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// apiError is an EC2 error response.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errf(code, format string, args ...any) *apiError {
	status := http.StatusBadRequest
	switch code {
	case "RequestLimitExceeded", "ServiceUnavailable":
		status = http.StatusServiceUnavailable
	case "InternalError":
		status = http.StatusInternalServerError
	case "UnauthorizedOperation", "AuthFailure":
		status = http.StatusForbidden
	}
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

var credentialRegion = regexp.MustCompile(`Credential=[^/]+/\d{8}/([a-z0-9-]+)/ec2/aws4_request`)

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	reqID := newUUID()
	m := credentialRegion.FindStringSubmatch(r.Header.Get("Authorization"))
	if m == nil {
		writeError(w, reqID, errf("AuthFailure", "AWS was not able to validate the provided access credentials"))
		return
	}
	region := m[1]
	if err := r.ParseForm(); err != nil {
		writeError(w, reqID, errf("InvalidParameterValue", "bad form: %v", err))
		return
	}
	action := r.PostForm.Get("Action")
	s.mu.Lock()
	hooks := s.settle()
	s.calls[action]++
	s.requests = append(s.requests, r.PostForm.Encode())
	if q := s.faults[action]; len(q) > 0 {
		code := q[0]
		s.faults[action] = q[1:]
		s.mu.Unlock()
		runHooks(hooks)
		writeError(w, reqID, errf(code, "injected %s for %s", code, action))
		return
	}
	var resp any
	var aerr *apiError
	f := form(r.PostForm)
	switch action {
	case "DescribeVolumes":
		resp, aerr = s.describeVolumes(region, f)
	case "CreateVolume":
		resp, aerr = s.createVolume(region, f)
	case "AttachVolume":
		resp, aerr = s.attachVolume(region, f)
	case "DescribeSnapshots":
		resp, aerr = s.describeSnapshots(region, f)
	case "CreateSnapshot":
		resp, aerr = s.createSnapshot(region, f)
	case "DeleteSnapshot":
		resp, aerr = s.deleteSnapshot(region, f)
	case "ModifyVolume":
		resp, aerr = s.modifyVolume(region, f)
	case "DescribeVolumesModifications":
		resp, aerr = s.describeVolumesModifications(region, f)
	case "DetachVolume":
		resp, aerr = s.detachVolume(region, f)
	case "CreateTags":
		resp, aerr = s.createTags(region, f)
	case "DescribeInstances":
		resp, aerr = s.describeInstances(region, f)
	default:
		aerr = errf("InvalidAction", "The action %s is not valid for this web service.", action)
	}
	s.mu.Unlock()
	runHooks(hooks)
	if aerr != nil {
		writeError(w, reqID, aerr)
		return
	}
	writeXML(w, http.StatusOK, action+"Response", reqID, resp)
}

func writeError(w http.ResponseWriter, reqID string, e *apiError) {
	type xmlErr struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	body := struct {
		XMLName   xml.Name `xml:"Response"`
		Errors    []xmlErr `xml:"Errors>Error"`
		RequestID string   `xml:"RequestID"`
	}{Errors: []xmlErr{{e.code, e.message}}, RequestID: reqID}
	out, _ := xml.Marshal(body)
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func writeXML(w http.ResponseWriter, status int, root, reqID string, body any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	var b strings.Builder
	b.WriteString(xml.Header)
	fmt.Fprintf(&b, "<%s xmlns=%q>\n<requestId>%s</requestId>\n", root, Namespace, reqID)
	var inner strings.Builder
	enc := xml.NewEncoder(&inner)
	enc.Indent("", " ")
	if err := enc.EncodeElement(body, xml.StartElement{Name: xml.Name{Local: "x"}}); err != nil {
		panic(err) // our own structs always marshal
	}
	// The wrapper element <x> is only there to encode the fields: strip its start and end tags.
	s := strings.TrimSuffix(strings.TrimPrefix(inner.String(), "<x>"), "</x>")
	b.WriteString(s)
	fmt.Fprintf(&b, "\n</%s>\n", root)
	_, _ = w.Write([]byte(b.String()))
}

// form reads the flattened Query-API lists (Filter.1.Name, Filter.1.Value.1, TagSpecification.1.Tag.1.Key ...).
type form map[string][]string

func (f form) get(k string) string {
	if v := f[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (f form) list(prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := f[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

func (f form) filters() map[string][]string {
	out := map[string][]string{}
	for i := 1; ; i++ {
		p := "Filter." + strconv.Itoa(i)
		name := f.get(p + ".Name")
		if name == "" {
			return out
		}
		out[name] = append(out[name], f.list(p+".Value")...)
	}
}

func (f form) tags(resourceType string) ([]Tag, *apiError) {
	var tags []Tag
	for i := 1; ; i++ {
		p := "TagSpecification." + strconv.Itoa(i)
		rt := f.get(p + ".ResourceType")
		if rt == "" {
			return tags, nil
		}
		if rt != resourceType {
			return nil, errf("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
		for j := 1; ; j++ {
			tp := p + ".Tag." + strconv.Itoa(j)
			k, ok := f[tp+".Key"]
			if !ok {
				break
			}
			if strings.HasPrefix(strings.ToLower(k[0]), "aws:") {
				return nil, errf("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
			}
			tags = append(tags, Tag{Key: k[0], Value: f.get(tp + ".Value")})
		}
	}
}

func tagValue(tags []Tag, k string) (string, bool) {
	for _, t := range tags {
		if t.Key == k {
			return t.Value, true
		}
	}
	return "", false
}

// matchTags applies tag:K and tag-key filters.
func matchTags(tags []Tag, filters map[string][]string) bool {
	for name, vals := range filters {
		switch {
		case strings.HasPrefix(name, "tag:"):
			v, ok := tagValue(tags, strings.TrimPrefix(name, "tag:"))
			if !ok || !contains(vals, v) {
				return false
			}
		case name == "tag-key":
			found := false
			for _, k := range vals {
				if _, ok := tagValue(tags, k); ok {
					found = true
				}
			}
			if !found {
				return false
			}
		}
	}
	return true
}

// contains is a filter match: v is one of vals, or vals has the wildcard "*".
func contains(vals []string, v string) bool {
	return slices.Contains(vals, v) || slices.Contains(vals, "*")
}

func regionOf(az string) string {
	if az == "" {
		return ""
	}
	return strings.TrimRight(az, "abcdefghijklmnopqrstuvwxyz")
}

func newID(prefix string) string {
	b := make([]byte, 9)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)[:17]
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
