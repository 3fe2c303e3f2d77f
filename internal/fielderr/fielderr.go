// Package fielderr is how a spec owned by one package (a node's thresholds, a volume) reports what is wrong with
// it field by field, so the configuration loader can point each message at the file and line of that attribute,
// while callers that have no file (Nomad discovery, the volume plugin) get the same messages as plain errors.
package fielderr

import (
	"fmt"
	"strings"
)

// Error is a problem with one field. Field is the attribute's name in the configuration ("size_gib"); "" means
// the block as a whole.
type Error struct {
	Field string
	Msg   string
}

func (e Error) Error() string { return e.Msg }

// List collects field errors.
type List []Error

// Add records a problem with field.
func (l *List) Add(field, format string, args ...any) {
	*l = append(*l, Error{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Err is nil for an empty list, else an error whose text is every message, one a line. errors.As finds the List.
func (l List) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

func (l List) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Msg
	}
	return strings.Join(msgs, "\n")
}
