package natsjs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

// Link is where the stream's chain stands: the sequence of its last
// message, and the hash the next event links to (prev_hash).
type Link struct {
	Seq  uint64
	Hash string
}

// Message is one event as the stream stores it: the spine's GovernanceEvent,
// with event_id the stream sequence it is stored at and the chain hash
// computed by the agent (package chain, the spine's canonical hash).
type Message struct {
	Seq  uint64
	Hash string
	// Data is the message body: the GovernanceEvent's canonical JSON
	// (sorted keys, no whitespace, ASCII).
	Data []byte
}

// Build returns ev as the message stored at after.Seq+1, linked to
// after.Hash. It is pure: the same event after the same link is the same
// bytes, which is how a read-back recognises the agent's own message.
func Build(ev *envelope.Event, after Link) Message {
	seq := after.Seq + 1
	payload := ev.Payload()
	h := chain.HashWithPayload(chain.Event{EventID: int64(seq), Timestamp: ev.Timestamp, Kind: ev.Kind,
		Source: ev.Source, PrevHash: after.Hash}, payload)
	b := make([]byte, 0, len(payload)+len(ev.Kind)+len(ev.Source)+len(ev.Timestamp)+224)
	b = append(b, `{"event_id":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"hash":`...)
	b = pgjson.AppendText(b, h)
	b = append(b, `,"kind":`...)
	b = pgjson.AppendText(b, ev.Kind)
	b = append(b, `,"payload":`...)
	b = append(b, payload...)
	b = append(b, `,"prev_hash":`...)
	b = pgjson.AppendText(b, after.Hash)
	b = append(b, `,"source":`...)
	b = pgjson.AppendText(b, ev.Source)
	b = append(b, `,"timestamp":`...)
	b = pgjson.AppendText(b, ev.Timestamp)
	b = append(b, '}')
	return Message{Seq: seq, Hash: h, Data: b}
}

// ErrNotChained marks a stored message that is not a link of the chain: not
// a GovernanceEvent, stored at another sequence than its event_id, or with
// a hash its content does not have.
var ErrNotChained = errors.New("not a chained event")

// Parse reads a stored message at seq and checks that it is a link of the
// chain: a GovernanceEvent whose event_id is seq and whose hash is the hash
// of its content. It does not check prev_hash, which depends on the message
// before it (Verify does).
func Parse(seq uint64, data []byte) (chain.Event, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var e chain.Event
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("message %d: %w: %w", seq, ErrNotChained, err)
	}
	if dec.More() {
		return e, fmt.Errorf("message %d: %w: data after the event", seq, ErrNotChained)
	}
	if e.EventID <= 0 || uint64(e.EventID) != seq {
		return e, fmt.Errorf("message %d: %w: its event_id is %d", seq, ErrNotChained, e.EventID)
	}
	if len(e.Hash) != 64 || len(e.PrevHash) != 64 {
		return e, fmt.Errorf("message %d: %w: no hash or prev_hash", seq, ErrNotChained)
	}
	h, err := chain.Hash(e)
	if err != nil {
		return e, fmt.Errorf("message %d: %w: %w", seq, ErrNotChained, err)
	}
	if h != e.Hash {
		return e, fmt.Errorf("message %d: %w: its content hashes to %s, not to its hash %s", seq, ErrNotChained, h, e.Hash)
	}
	return e, nil
}
