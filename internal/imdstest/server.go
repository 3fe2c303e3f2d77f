// Package imdstest is an IMDSv2 (EC2 instance metadata service) server for tests: a session token from
// PUT /latest/api/token, then token-authenticated GETs of the instance identity document, a few meta-data paths,
// the instance's tags (when tags in metadata are on), its user data and its instance role's credentials (when it
// has a role). Like a real instance configured with
// HttpTokens=required, it refuses IMDSv1 (token-less) requests with 401, so a client that falls back to v1 fails.
// The real aws-sdk-go-v2 imds client, and curl in the AMI's boot script, talk to it through its URL.
package imdstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Identity is what the server reports about "this instance".
type Identity struct {
	InstanceID       string
	AvailabilityZone string
	Region           string
	InstanceType     string
	AccountID        string
	ImageID          string
	PrivateIP        string
	// Tags are the instance's tags under meta-data/tags/instance; nil: the instance_metadata_tags launch option
	// is off, and that path is not found.
	Tags map[string]string
	// UserData is what user-data answers; nil: the instance has none (not found).
	UserData []byte
	// Role is the name of the instance profile's role, whose temporary credentials meta-data/iam/security-credentials/
	// hands out (the SDKs' instance role provider reads them); "": the instance has no role (not found).
	Role string
}

// Credentials are the instance role's temporary credentials the server hands out: made up, good only for the
// test servers (which read the region from a signature, never check it).
type Credentials struct {
	AccessKeyID, SecretAccessKey, Token string
	Expiration                          time.Time
}

// Server is the fake metadata endpoint.
type Server struct {
	URL string

	srv      *httptest.Server
	mu       sync.Mutex
	id       Identity
	creds    Credentials
	tokens   map[string]time.Time
	v1       int // token-less requests refused
	rejected int // every refused request: v1, wrong method, bad TTL, proxied token request
	gets     int
}

// New starts a server answering for id on a loopback port.
func New(id Identity) *Server { return NewOn(nil, id) }

// NewOn is New serving on l, e.g. a listener on 169.254.169.254:80 in a test's network namespace, the address an
// instance reaches; nil is a loopback port.
func NewOn(l net.Listener, id Identity) *Server {
	if id.Region == "" && len(id.AvailabilityZone) > 1 {
		id.Region = id.AvailabilityZone[:len(id.AvailabilityZone)-1]
	}
	if id.InstanceType == "" {
		id.InstanceType = "m6i.large"
	}
	if id.AccountID == "" {
		id.AccountID = "123456789012"
	}
	if id.ImageID == "" {
		id.ImageID = "ami-0123456789abcdef0"
	}
	if id.PrivateIP == "" {
		id.PrivateIP = "10.0.1.23"
	}
	s := &Server{id: id, tokens: map[string]time.Time{}}
	if id.Role != "" {
		s.creds = Credentials{AccessKeyID: "ASIA" + strings.ToUpper(randomHex(8)), SecretAccessKey: randomHex(20),
			Token: randomHex(48), Expiration: time.Now().Add(6 * time.Hour).UTC().Truncate(time.Second)}
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

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RoleCredentials returns the instance role's credentials (zero when the instance has no role).
func (s *Server) RoleCredentials() Credentials { return s.creds }

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Refused returns how many token-less (IMDSv1) requests were refused.
func (s *Server) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v1
}

// Rejected returns how many requests were refused for any reason (no or a bad token, wrong method, bad TTL, a
// proxied token request).
func (s *Server) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

// Tokens returns how many session tokens were handed out.
func (s *Server) Tokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tokens)
}

func (s *Server) reject(w http.ResponseWriter, code int) {
	s.mu.Lock()
	s.rejected++
	s.mu.Unlock()
	http.Error(w, http.StatusText(code), code)
}

// Gets returns how many authenticated GETs were answered.
func (s *Server) Gets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			s.reject(w, http.StatusMethodNotAllowed)
			return
		}
		if r.Header.Get("X-Forwarded-For") != "" {
			// IMDSv2 refuses proxied token requests.
			s.reject(w, http.StatusForbidden)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			s.reject(w, http.StatusBadRequest)
			return
		}
		tok := randomHex(24)
		s.mu.Lock()
		s.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
		s.mu.Unlock()
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", strconv.Itoa(ttl))
		_, _ = w.Write([]byte(tok))
		return
	}
	if r.Method != http.MethodGet {
		s.reject(w, http.StatusMethodNotAllowed)
		return
	}
	tok := r.Header.Get("X-Aws-Ec2-Metadata-Token")
	s.mu.Lock()
	exp, ok := s.tokens[tok]
	if !ok || time.Now().After(exp) {
		s.v1++
		s.mu.Unlock()
		s.reject(w, http.StatusUnauthorized)
		return
	}
	s.gets++
	s.mu.Unlock()
	body, ok := s.answer(strings.TrimPrefix(r.URL.Path, "/latest/"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write(body)
}

// answer is what a GET of /latest/<path> returns, and false for a path the instance does not have.
func (s *Server) answer(path string) ([]byte, bool) {
	id := s.id
	switch path {
	case "dynamic/instance-identity/document":
		doc := map[string]any{
			"accountId": id.AccountID, "architecture": "x86_64", "availabilityZone": id.AvailabilityZone,
			"billingProducts": nil, "devpayProductCodes": nil, "marketplaceProductCodes": nil,
			"imageId": id.ImageID, "instanceId": id.InstanceID, "instanceType": id.InstanceType,
			"kernelId": nil, "pendingTime": "2024-01-02T03:04:05Z", "privateIp": id.PrivateIP,
			"ramdiskId": nil, "region": id.Region, "version": "2017-09-30",
		}
		b, _ := json.MarshalIndent(doc, "", "  ")
		return b, true
	case "user-data":
		return id.UserData, id.UserData != nil
	case "meta-data/tags/instance", "meta-data/tags/instance/":
		if id.Tags == nil {
			return nil, false
		}
		return []byte(strings.Join(slices.Sorted(maps.Keys(id.Tags)), "\n")), true
	}
	if id.Role != "" {
		switch path {
		case "meta-data/iam/security-credentials", "meta-data/iam/security-credentials/":
			return []byte(id.Role), true
		case "meta-data/iam/security-credentials/" + id.Role:
			b, _ := json.MarshalIndent(map[string]string{
				"Code": "Success", "LastUpdated": time.Now().UTC().Format(time.RFC3339), "Type": "AWS-HMAC",
				"AccessKeyId": s.creds.AccessKeyID, "SecretAccessKey": s.creds.SecretAccessKey, "Token": s.creds.Token,
				"Expiration": s.creds.Expiration.Format(time.RFC3339),
			}, "", "  ")
			return b, true
		case "meta-data/iam/info":
			b, _ := json.MarshalIndent(map[string]string{
				"Code": "Success", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
				"InstanceProfileArn": "arn:aws:iam::" + id.AccountID + ":instance-profile/" + id.Role,
				"InstanceProfileId":  "AIPA" + strings.ToUpper(randomHex(8)),
			}, "", "  ")
			return b, true
		}
	}
	if key, ok := strings.CutPrefix(path, "meta-data/tags/instance/"); ok {
		v, found := id.Tags[key]
		return []byte(v), found
	}
	v, ok := map[string]string{
		"meta-data/instance-id":                 id.InstanceID,
		"meta-data/placement/availability-zone": id.AvailabilityZone,
		"meta-data/placement/region":            id.Region,
		"meta-data/instance-type":               id.InstanceType,
		"meta-data/ami-id":                      id.ImageID,
		"meta-data/local-ipv4":                  id.PrivateIP,
	}[path]
	return []byte(v), ok
}
