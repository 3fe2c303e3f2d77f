// Package alerts holds chainwarden's Prometheus alert rules (chainwarden.rules.yml), embedded for the demo, and
// their promtool unit tests.
package alerts

import _ "embed"

// Rules is chainwarden.rules.yml as shipped.
//
//go:embed chainwarden.rules.yml
var Rules []byte
