package spinetest

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// Canonical returns the canonical JSON of v exactly as the audit-stream spine
// computes it (see chain.Canonical, which the double shares with
// pgaudit-cdc verify).
func Canonical(v any) ([]byte, error) { return chain.Canonical(v) }

// Hash returns the chain hash of e as the spine computes it (chain.Hash).
// It panics only if e.Payload holds a value Canonical rejects, which cannot
// happen for a payload decoded from JSON.
func Hash(e Event) string {
	h, err := chain.Hash(e.chainEvent())
	if err != nil {
		panic(fmt.Sprintf("spinetest: %v", err))
	}
	return h
}

func canonicalEvent(e Event) ([]byte, error) { return chain.CanonicalEvent(e.chainEvent()) }

func writeValue(buf *bytes.Buffer, v any, ascii bool) error { return chain.WriteValue(buf, v, ascii) }

func (e Event) chainEvent() chain.Event {
	return chain.Event{EventID: e.EventID, Timestamp: e.Timestamp, Kind: e.Kind, Source: e.Source,
		Payload: e.Payload, PrevHash: e.PrevHash, Hash: e.Hash}
}

func writeString(buf *bytes.Buffer, s string, ascii bool) { _ = chain.WriteValue(buf, s, ascii) }

// isIntLiteral reports whether a (valid) JSON number literal is a Python int.
func isIntLiteral(lit string) bool { return !strings.ContainsAny(lit, ".eE") }
