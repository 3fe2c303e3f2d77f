// Package alerts holds chainwarden's Prometheus alert rules (chainwarden.rules.yml) and their promtool unit tests.
package alerts

import (
	"testing"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

func TestRulesAreValidAndFireAsDocumented(t *testing.T) {
	promtool := testenv.Bin(t, "promtool")
	testenv.Run(t, promtool, "check", "rules", "chainwarden.rules.yml")
	testenv.Run(t, promtool, "test", "rules", "chainwarden.rules.test.yml")
}
