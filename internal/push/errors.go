package push

import (
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxErrText caps the text of a subscription error: it lands in logs and the agent's health answers.
const maxErrText = 512

// tidyError keeps err's chain (errors.Is/As) behind a message without the node's URL, which can hold an API key
// (wss://mainnet.infura.io/ws/v3/KEY), clipped to maxErrText.
type tidyError struct {
	err error
	msg string
}

func (e *tidyError) Error() string { return e.msg }
func (e *tidyError) Unwrap() error { return e.err }

func tidy(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if rawURL != "" {
		msg = strings.ReplaceAll(msg, rawURL, redactURL(rawURL))
	}
	if len(msg) > maxErrText {
		cut := maxErrText
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "...(truncated)"
	}
	if msg == err.Error() {
		return err
	}
	return &tidyError{err: err, msg: msg}
}

// redactURL keeps only the scheme and host of a URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "<url>"
	}
	return u.Scheme + "://" + u.Host
}
