package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Canonical returns v as canonical JSON: encoding/json's output with the
// spine's canonical form applied (sorted keys, ASCII escapes, Python's
// numbers). It is for values built off the hot path (self-audit, gaps,
// checkpoints).
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return CanonicalRaw(raw)
}

// CanonicalRaw returns the JSON text raw in canonical form.
func CanonicalRaw(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parsing JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parsing JSON: more than one value")
	}
	return chain.Canonical(v)
}

// ErrNotEnvelope is wrapped by Parse errors for bodies that are not an
// envelope pgaudit-cdc wrote.
var ErrNotEnvelope = errors.New("not a pgaudit-cdc envelope")

// ParseEvent reads an encoded envelope (a dead letter, a recorded KEY or
// SEAL event) back into an event, encoded again from its value.
func ParseEvent(body []byte) (*Event, error) {
	env, err := Parse(body)
	if err != nil {
		return nil, err
	}
	ev := &Event{Envelope: env}
	ev.Finish()
	return ev, nil
}

// ParseKept reads a kept envelope (a dead letter) back into an event and
// checks that it still carries key, the one it was kept under. Both are
// checked before anything is sent.
func ParseKept(key string, body []byte) (*Event, error) {
	ev, err := ParseEvent(body)
	if err != nil {
		return nil, fmt.Errorf("reading the stored envelope of %s: %w", key, err)
	}
	if ev.Key != key {
		return nil, fmt.Errorf("the stored envelope of %s carries the key %q: it was altered; delete the dead letter and restore the event from the audited database", key, ev.Key)
	}
	return ev, nil
}

// Parse reads an encoded envelope back into its value (a dead letter kept
// as bytes, to be retried). Members Parse does not know are kept as Fields
// in the payload; unknown metadata members are refused, since the envelope
// could not be written again as it was.
func Parse(body []byte) (Envelope, error) {
	var top struct {
		Kind      string                     `json:"kind"`
		Source    string                     `json:"source"`
		Timestamp string                     `json:"timestamp"`
		Payload   map[string]json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrNotEnvelope, err)
	}
	e := Envelope{Kind: top.Kind, Source: top.Source, Timestamp: top.Timestamp}
	metaRaw, ok := top.Payload["metadata"]
	if !ok {
		return Envelope{}, fmt.Errorf("%w: no payload.metadata", ErrNotEnvelope)
	}
	for name, raw := range top.Payload {
		var err error
		switch name {
		case "metadata":
		case "table":
			err = json.Unmarshal(raw, &e.Table)
		case "operation":
			err = json.Unmarshal(raw, &e.Operation)
		case "old":
			e.Old, err = CanonicalRaw(raw)
		case "new":
			e.New, err = CanonicalRaw(raw)
		default:
			var v []byte
			v, err = CanonicalRaw(raw)
			e.Fields = append(e.Fields, Field{Name: name, Value: v})
		}
		if err != nil {
			return Envelope{}, fmt.Errorf("%w: payload.%s: %w", ErrNotEnvelope, name, err)
		}
	}
	if err := e.parseMetadata(metaRaw); err != nil {
		return Envelope{}, err
	}
	return e, nil
}

func (e *Envelope) parseMetadata(raw json.RawMessage) error {
	var m struct {
		CommitLSN        string          `json:"commit_lsn"`
		LSN              string          `json:"lsn"`
		Xid              *uint32         `json:"xid"`
		CommitTimestamp  string          `json:"commit_timestamp"`
		Key              string          `json:"idempotency_key"`
		Prev             json.RawMessage `json:"prev"`
		TxIndex          *uint32         `json:"tx_index"`
		TxEvents         uint32          `json:"tx_events"`
		OldIsKeyOnly     bool            `json:"old_is_key_only"`
		Unavailable      []string        `json:"unavailable_columns"`
		Annotations      json.RawMessage `json:"annotations"`
		AnnotationsError string          `json:"annotations_error"`
		Late             bool            `json:"late"`
		Redelivered      bool            `json:"redelivered"`
		Supersedes       int64           `json:"supersedes_event_id"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("%w: payload.metadata: %w", ErrNotEnvelope, err)
	}
	var err error
	if e.CommitLSN, err = pgoutput.ParseLSN(m.CommitLSN); err != nil {
		return fmt.Errorf("%w: metadata.commit_lsn: %w", ErrNotEnvelope, err)
	}
	if e.LSN, err = pgoutput.ParseLSN(m.LSN); err != nil {
		return fmt.Errorf("%w: metadata.lsn: %w", ErrNotEnvelope, err)
	}
	if m.Xid != nil {
		e.Xid, e.HasXid = *m.Xid, true
	}
	e.CommitTimestamp, e.Key, e.TxEvents = m.CommitTimestamp, m.Key, m.TxEvents
	e.OldIsKeyOnly, e.Unavailable, e.AnnotationsError = m.OldIsKeyOnly, m.Unavailable, m.AnnotationsError
	e.Late, e.Redelivered, e.Supersedes = m.Late, m.Redelivered, m.Supersedes
	if m.TxIndex != nil {
		e.Linked, e.TxIndex = true, *m.TxIndex
		if len(m.Prev) > 0 && string(m.Prev) != "null" {
			var s string
			if err := json.Unmarshal(m.Prev, &s); err != nil {
				return fmt.Errorf("%w: metadata.prev: %w", ErrNotEnvelope, err)
			}
			p, ok := ParsePosition(s)
			if !ok {
				return fmt.Errorf("%w: metadata.prev %q is not a position", ErrNotEnvelope, s)
			}
			e.Prev = p
		}
	}
	if len(m.Annotations) > 0 && string(m.Annotations) != "null" {
		if e.Annotations, err = CanonicalRaw(m.Annotations); err != nil {
			return fmt.Errorf("%w: metadata.annotations: %w", ErrNotEnvelope, err)
		}
	}
	return nil
}
