// Package imdstest is an IMDSv2 (EC2 instance metadata service) server for tests: a session token from
// PUT /latest/api/token, then token-authenticated GETs of the instance identity document, a few meta-data paths,
// the instance's tags (when tags in metadata are on) and its user data. Like a real instance configured with
// HttpTokens=required, it refuses IMDSv1 (token-less) requests with 401, so a client that falls back to v1 fails.
// The real aws-sdk-go-v2 imds client, and curl in the AMI's boot script, talk to it through its URL.
package imdstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"maps"
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
}

// Server is the fake metadata endpoint.
type Server struct {
	URL string

	srv      *httptest.Server
	mu       sync.Mutex
	id       Identity
	tokens   map[string]time.Time
	v1       int // token-less requests refused
	rejected int // every refused request: v1, wrong method, bad TTL, proxied token request
	gets     int
}

// New starts a server answering for id.
func New(id Identity) *Server {
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
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = s.srv.URL
	return s
}

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
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
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
