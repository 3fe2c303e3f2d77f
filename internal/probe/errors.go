package probe

import (
	"errors"
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxErrText caps the text of an error a prober returns. Errors end up in Consul check output (4 KB), logs and
// HTTP answers; a node can put anything into a body or an RPC error message.
const maxErrText = 512

// clip shortens s to at most n bytes (on a rune boundary), marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...(truncated)"
}

// tidyError keeps the error chain of err (errors.Is and errors.As still see ErrTooLarge, context.DeadlineExceeded,
// *url.Error, ...) but gives it a message that is clipped and does not carry a full node URL: an RPC URL can hold
// an API key in its path (https://mainnet.infura.io/v3/KEY) and net/http quotes the URL in every transport error.
type tidyError struct {
	err error
	msg string
}

func (e *tidyError) Error() string { return e.msg }
func (e *tidyError) Unwrap() error { return e.err }

// tidy returns err with a clipped message whose URLs are reduced to scheme://host. nil stays nil.
func tidy(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != "" {
		msg = strings.ReplaceAll(msg, ue.URL, redactURL(ue.URL))
	}
	msg = clip(msg, maxErrText)
	if msg == err.Error() {
		return err
	}
	return &tidyError{err: err, msg: msg}
}

// redactURL keeps only the scheme and host of a URL: no user info, path, query or fragment.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "<url>"
	}
	return u.Scheme + "://" + u.Host
}

// joinErrors joins errs into one error with a one-line message ("a; b"), keeping each for errors.Is/As.
// It returns nil when errs holds no error.
func joinErrors(errs ...error) error {
	var n int
	var only error
	for _, e := range errs {
		if e != nil {
			n++
			only = e
		}
	}
	switch n {
	case 0:
		return nil
	case 1:
		return only
	}
	j := &joinedError{}
	for _, e := range errs {
		if e != nil {
			j.errs = append(j.errs, e)
		}
	}
	return j
}

type joinedError struct{ errs []error }

func (j *joinedError) Error() string {
	var b strings.Builder
	for i, e := range j.errs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (j *joinedError) Unwrap() []error { return j.errs }
