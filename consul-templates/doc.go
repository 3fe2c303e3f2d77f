// Package consultemplates holds the RPC proxy's consul-template sources (nginx/ and haproxy/: templates, static
// configs, JSON-RPC filters, consul-template configs and the validate-then-reload scripts) and their integration
// tests, which run them with real consul-template, nginx, HAProxy, Consul and geth. There is no Go API here: the
// directory is a Go package only so `go test ./...` runs those tests next to the files they exercise.
package consultemplates
