package probe

import (
	"bytes"
	"encoding/hex"
	"strings"
)

// Hash is a block hash: 32 bytes (Ethereum's Keccak-256, CometBFT's SHA-256). The zero Hash means unknown.
type Hash [32]byte

// IsZero reports whether the hash is unknown.
func (h Hash) IsZero() bool { return h == Hash{} }

// String is the hash as 0x and 64 lowercase hex digits ("" when unknown).
func (h Hash) String() string {
	if h.IsZero() {
		return ""
	}
	return "0x" + hex.EncodeToString(h[:])
}

// Short is the start of the hash as a person compares it in a check output: 0x and 10 hex digits.
func (h Hash) Short() string {
	if h.IsZero() {
		return "unknown"
	}
	return "0x" + hex.EncodeToString(h[:5])
}

// ParseHash reads a hash as Ethereum (0x-prefixed) or CometBFT (bare, upper case) renders it. Anything that is not
// 32 bytes of hex is the zero Hash (unknown): a node's odd hash must not fail its probe, it only leaves nothing to
// compare.
func ParseHash(s string) Hash {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	var h Hash
	if len(s) != 2*len(h) {
		return Hash{}
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return Hash{}
	}
	return h
}

// UnmarshalJSON reads a JSON string with ParseHash; null or any other value is the zero Hash, never an error.
func (h *Hash) UnmarshalJSON(b []byte) error {
	*h = Hash{}
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return nil
	}
	s := b[1 : len(b)-1]
	if len(s) == 2+2*len(h) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		s = s[2:]
	}
	if len(s) != 2*len(h) {
		return nil
	}
	if _, err := hex.Decode(h[:], s); err != nil {
		*h = Hash{}
	}
	return nil
}

// MarshalText writes the hash as String does ("" when unknown), for JSON values and keys.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads what MarshalText wrote (or any form ParseHash reads).
func (h *Hash) UnmarshalText(b []byte) error {
	*h = ParseHash(string(b))
	return nil
}
