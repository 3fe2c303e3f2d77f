// Package imdstest is an IMDSv2 (EC2 instance metadata service) server for tests: a session token from
// PUT /latest/api/token, then token-authenticated GETs of the instance identity document and a few meta-data paths.
// Like a real instance configured with HttpTokens=required, it refuses IMDSv1 (token-less) requests with 401, so a
// client that falls back to v1 fails. The real aws-sdk-go-v2 imds client talks to it through its Endpoint option.
package imdstest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
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
}

// Server is the fake metadata endpoint.
type Server struct {
	URL string

	srv    *httptest.Server
	mu     sync.Mutex
	id     Identity
	tokens map[string]time.Time
	v1     int // token-less requests refused
	gets   int
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

// Gets returns how many authenticated GETs were answered.
func (s *Server) Gets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			http.Error(w, "", http.StatusMethodNotAllowed)
			return
		}
		if r.Header.Get("X-Forwarded-For") != "" {
			// IMDSv2 refuses proxied token requests.
			http.Error(w, "", http.StatusForbidden)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "", http.StatusBadRequest)
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
		http.Error(w, "", http.StatusMethodNotAllowed)
		return
	}
	tok := r.Header.Get("X-Aws-Ec2-Metadata-Token")
	s.mu.Lock()
	exp, ok := s.tokens[tok]
	if !ok || time.Now().After(exp) {
		s.v1++
		s.mu.Unlock()
		http.Error(w, "", http.StatusUnauthorized)
		return
	}
	s.gets++
	s.mu.Unlock()
	id := s.id
	var body string
	switch r.URL.Path {
	case "/latest/dynamic/instance-identity/document":
		doc := map[string]any{
			"accountId": id.AccountID, "architecture": "x86_64", "availabilityZone": id.AvailabilityZone,
			"billingProducts": nil, "devpayProductCodes": nil, "marketplaceProductCodes": nil,
			"imageId": id.ImageID, "instanceId": id.InstanceID, "instanceType": id.InstanceType,
			"kernelId": nil, "pendingTime": "2024-01-02T03:04:05Z", "privateIp": id.PrivateIP,
			"ramdiskId": nil, "region": id.Region, "version": "2017-09-30",
		}
		b, _ := json.MarshalIndent(doc, "", "  ")
		body = string(b)
	case "/latest/meta-data/instance-id":
		body = id.InstanceID
	case "/latest/meta-data/placement/availability-zone":
		body = id.AvailabilityZone
	case "/latest/meta-data/placement/region":
		body = id.Region
	case "/latest/meta-data/instance-type":
		body = id.InstanceType
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(body))
}
