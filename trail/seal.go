package trail

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

// Operations of the trail's own events.
const (
	OpSeal = "SEAL" // a signed seal over a range of events
	OpKey  = "KEY"  // a signing key introduced (or rotated) into the trail
)

// Table is payload.table of SEAL and KEY events.
const Table = "pgaudit_cdc.trail"

// shortLen is how many bytes of each event's digest a seal lists, in order,
// so that a verifier can name the event that is missing or altered; the
// seal's digest covers the full digests.
const shortLen = 8

// Seal is payload.seal of a SEAL event. Canonical JSON of it is what the
// signature (payload.signature) signs.
type Seal struct {
	// Chain names the sequence of seals of one agent (its first system
	// identifier and slot); Seq counts them from 1, and Prev is the hash of
	// the seal before (SealHash), empty for the first.
	Chain string `json:"chain"`
	Seq   uint64 `json:"seq"`
	Prev  string `json:"prev"`
	// SystemID and Slot are the identity (generation) of the events
	// covered: those keyed under them at positions after From (empty: from
	// the start) up to and including To.
	SystemID string `json:"system_identifier"`
	Slot     string `json:"slot"`
	From     string `json:"from"`
	To       string `json:"to"`
	FirstKey string `json:"first_key"`
	LastKey  string `json:"last_key"`
	// Count events, in commit order; Events lists the first 8 bytes of each
	// one's digest (base64), Digest is the SHA-256 over their full digests,
	// in that order. Total counts the events of every seal of the chain so
	// far.
	Count  uint64 `json:"count"`
	Events string `json:"events"`
	Digest string `json:"digest"`
	Total  uint64 `json:"total"`
	// DeadLetters are covered events the destination refused (kept in
	// pgaudit_cdc.dead_letters): key → hex digest. They may be absent from
	// the trail, or arrive later, redelivered.
	DeadLetters map[string]string `json:"dead_letters,omitempty"`
	// Key is the signing key's fingerprint.
	Key      string `json:"key"`
	SealedAt string `json:"sealed_at"`
}

// SealKey is the idempotency key of seal seq of chain.
func SealKey(chain string, seq uint64) string {
	return "pgaudit-cdc-seal:" + chain + ":" + strconv.FormatUint(seq, 10)
}

// canonical is the canonical JSON of s, what is signed and hashed: its
// members in sorted order, written directly (TestSealCanonical holds it to
// envelope.Canonical, which went through encoding/json and back: a seal
// lists 8 bytes of every event it covers, and that round trip was 3 % of
// the agent's CPU).
func (s *Seal) canonical() ([]byte, error) {
	b := make([]byte, 0, 512+len(s.Events)+len(s.DeadLetters)*160)
	str := func(name, v string) {
		b = append(append(append(b, `,"`...), name...), `":`...)
		b = pgjson.AppendText(b, v)
	}
	num := func(name string, v uint64) {
		b = append(append(append(b, `,"`...), name...), `":`...)
		b = strconv.AppendUint(b, v, 10)
	}
	b = pgjson.AppendText(append(b, `{"chain":`...), s.Chain)
	num("count", s.Count)
	if len(s.DeadLetters) > 0 {
		b = append(b, `,"dead_letters":{`...)
		for i, k := range slices.Sorted(maps.Keys(s.DeadLetters)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(pgjson.AppendText(b, k), ':')
			b = pgjson.AppendText(b, s.DeadLetters[k])
		}
		b = append(b, '}')
	}
	str("digest", s.Digest)
	str("events", s.Events)
	str("first_key", s.FirstKey)
	str("from", s.From)
	str("key", s.Key)
	str("last_key", s.LastKey)
	str("prev", s.Prev)
	str("sealed_at", s.SealedAt)
	num("seq", s.Seq)
	str("slot", s.Slot)
	str("system_identifier", s.SystemID)
	str("to", s.To)
	num("total", s.Total)
	return append(b, '}'), nil
}

// Hash is the hex SHA-256 of s's canonical JSON: the next seal's Prev.
func (s *Seal) Hash() (string, error) {
	c, err := s.canonical()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:]), nil
}

// Anchor is where a chain of seals stands: the last seal, as recorded in the
// audited database and sent to the trail.
type Anchor struct {
	Chain    string
	Seq      uint64
	Hash     string
	SystemID string
	Slot     string
	To       envelope.Position
	ToKey    string
	// ToSource is the source of the event at To; FirstKey the first event
	// this seal covers.
	ToSource string
	FirstKey string
	Total    uint64
	// Event is the SEAL event, to send again if the trail lacks it.
	Event []byte
}

// IsZero reports whether a is the state before any seal.
func (a Anchor) IsZero() bool { return a.Seq == 0 }

// Sealer folds the agent's settled events, in commit order, and closes
// seals over them. It is used by one goroutine (the publisher).
type Sealer struct {
	key   *Key
	chain string
	last  Anchor
	// The identity of the events folded now; from is the position after
	// which they start.
	sys, slot string
	from      envelope.Position

	h          hash.Hash
	count      uint64
	short      []byte
	first      envelope.Position
	firstKey   string
	lastPos    envelope.Position
	lastKey    string
	lastSource string
	firstAt    time.Time
	dead       map[string]string
	sumScratch [sha256.Size]byte
}

// NewSealer continues the chain whose last seal is last (zero: a new chain,
// named chain), folding events keyed under sys and slot.
func NewSealer(key *Key, chain string, last Anchor, sys, slot string) *Sealer {
	s := &Sealer{key: key, chain: chain, last: last, h: sha256.New()}
	if !last.IsZero() {
		s.chain = last.Chain
	}
	s.SetIdentity(sys, slot)
	return s
}

// SetIdentity says which identity (system identifier, key slot) the next
// events are keyed under. Events of the last seal's identity at or before
// its end are already sealed; a new identity (a new generation) starts from
// its beginning. Pending events must have been sealed first.
func (s *Sealer) SetIdentity(sys, slot string) {
	s.sys, s.slot = sys, slot
	s.from = envelope.Position{}
	if s.last.SystemID == sys && s.last.Slot == slot {
		s.from = s.last.To
	}
}

// Last returns the last seal's anchor.
func (s *Sealer) Last() Anchor { return s.last }

// Pending is the number of events folded since the last seal, and when
// the first of them was.
func (s *Sealer) Pending() (int, time.Time) { return int(s.count), s.firstAt }

// Fold adds a settled event: delivered, found in the trail already, or
// kept as a dead letter (dead). Events come in commit order; one at or
// before what was folded or sealed already is ignored.
func (s *Sealer) Fold(ev *envelope.Event, dead bool, now time.Time) {
	if !s.from.Less(ev.Pos) || (s.count > 0 && !s.lastPos.Less(ev.Pos)) {
		return
	}
	d := ev.Digest()
	s.h.Write(d[:])
	s.short = append(s.short, d[:shortLen]...)
	if s.count == 0 {
		s.first, s.firstKey, s.firstAt = ev.Pos, ev.Key, now
	}
	s.count++
	s.lastPos, s.lastKey, s.lastSource = ev.Pos, ev.Key, ev.Source
	if dead {
		if s.dead == nil {
			s.dead = map[string]string{}
		}
		s.dead[ev.Key] = hex.EncodeToString(d[:])
	}
}

// Close seals what was folded: it returns the SEAL event and the new
// anchor, and starts folding afresh after it. It returns nil when nothing
// is pending.
func (s *Sealer) Close(now time.Time) (*envelope.Event, Anchor, error) {
	if s.count == 0 {
		return nil, s.last, nil
	}
	seal := Seal{
		Chain: s.chain, Seq: s.last.Seq + 1, Prev: s.last.Hash,
		SystemID: s.sys, Slot: s.slot, To: s.lastPos.String(),
		FirstKey: s.firstKey, LastKey: s.lastKey, Count: s.count,
		Events: base64.StdEncoding.EncodeToString(s.short),
		Digest: hex.EncodeToString(s.h.Sum(s.sumScratch[:0])),
		Total:  s.last.Total + s.count, DeadLetters: s.dead,
		Key: s.key.Fingerprint(), SealedAt: envelope.FormatTimestamp(now),
	}
	if !s.from.IsZero() {
		seal.From = s.from.String()
	}
	ev, hash, err := sealEvent(s.key, &seal, s.lastPos, now)
	if err != nil {
		return nil, s.last, err
	}
	s.last = Anchor{Chain: s.chain, Seq: seal.Seq, Hash: hash, SystemID: s.sys, Slot: s.slot,
		To: s.lastPos, ToKey: s.lastKey, ToSource: s.lastSource, FirstKey: s.firstKey, Total: seal.Total, Event: ev.Body}
	s.from = s.lastPos
	s.h.Reset()
	s.count, s.short, s.dead = 0, s.short[:0], nil
	return ev, s.last, nil
}

// sealEvent signs seal and wraps it in its envelope.
func sealEvent(key *Key, seal *Seal, to envelope.Position, now time.Time) (*envelope.Event, string, error) {
	canon, err := seal.canonical()
	if err != nil {
		return nil, "", fmt.Errorf("BUG: encoding a seal: %w", err)
	}
	sum := sha256.Sum256(canon)
	sig := base64.StdEncoding.EncodeToString(key.Sign(canon))
	ev := &envelope.Event{
		Pos: to, CommitTime: now,
		Envelope: envelope.Envelope{
			Kind: envelope.SelfAuditKind, Source: envelope.SelfAuditSource, Timestamp: envelope.FormatTimestamp(now),
			Table: Table, Operation: OpSeal,
			Fields: []envelope.Field{{Name: "seal", Value: canon},
				{Name: "signature", Value: strconv.AppendQuote(nil, sig)}},
			CommitLSN: to.CommitLSN, LSN: to.CommitLSN, Key: SealKey(seal.Chain, seal.Seq),
		},
	}
	ev.Finish()
	return ev, hex.EncodeToString(sum[:]), nil
}

// KeyRecord is payload.key of a KEY event: a public key the trail's seals
// may be signed with from this event on. The KEY event is signed by the key
// itself (payload.signature) and, for a rotation, by the key before it
// (payload.endorsement).
type KeyRecord struct {
	Chain       string `json:"chain"`
	Fingerprint string `json:"fingerprint"`
	PublicKey   string `json:"public_key"`
	// Previous is the fingerprint of the key this one replaces (empty for
	// the chain's first key).
	Previous  string `json:"previous"`
	CreatedAt string `json:"created_at"`
}

// KeyKey is the idempotency key of the KEY event of fingerprint fp.
func KeyKey(chain, fp string) string { return "pgaudit-cdc-key:" + chain + ":" + fp }

// KeyEvent builds the KEY event introducing key into chain, endorsed by
// previous (nil for the chain's first key, or when the previous key was
// lost: an auditor must then pin the new key).
func KeyEvent(key, previous *Key, chain string, at time.Time) (*envelope.Event, error) {
	rec := KeyRecord{Chain: chain, Fingerprint: key.Fingerprint(), PublicKey: EncodePublic(key.Public()),
		CreatedAt: envelope.FormatTimestamp(at)}
	if previous != nil {
		rec.Previous = previous.Fingerprint()
	}
	canon, err := envelope.Canonical(rec)
	if err != nil {
		return nil, fmt.Errorf("BUG: encoding a key record: %w", err)
	}
	fields := []envelope.Field{{Name: "key", Value: canon},
		{Name: "signature", Value: strconv.AppendQuote(nil, base64.StdEncoding.EncodeToString(key.Sign(canon)))}}
	if previous != nil {
		fields = append(fields, envelope.Field{Name: "endorsement",
			Value: strconv.AppendQuote(nil, base64.StdEncoding.EncodeToString(previous.Sign(canon)))})
	}
	ev := &envelope.Event{CommitTime: at, Envelope: envelope.Envelope{
		Kind: envelope.SelfAuditKind, Source: envelope.SelfAuditSource, Timestamp: envelope.FormatTimestamp(at),
		Table: Table, Operation: OpKey, Fields: fields, Key: KeyKey(chain, rec.Fingerprint),
	}}
	ev.Finish()
	return ev, nil
}

// ParseAnchorEvent reads the seal out of a SEAL event's envelope (an anchor
// row's copy), for the agent to continue the chain.
func ParseAnchorEvent(body []byte) (Seal, error) {
	var env struct {
		Payload struct {
			Seal Seal `json:"seal"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return Seal{}, fmt.Errorf("reading a SEAL event: %w", err)
	}
	if env.Payload.Seal.Seq == 0 {
		return Seal{}, errors.New("reading a SEAL event: no seal in it")
	}
	return env.Payload.Seal, nil
}

// verifySig checks sig (base64) over msg with pub.
func verifySig(pub ed25519.PublicKey, msg []byte, sig string) bool {
	raw, err := base64.StdEncoding.DecodeString(sig)
	return err == nil && len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, msg, raw)
}

// IsTrailKey reports whether an idempotency key is one of a SEAL or KEY
// event.
func IsTrailKey(key string) bool {
	return strings.HasPrefix(key, "pgaudit-cdc-seal:") || strings.HasPrefix(key, "pgaudit-cdc-key:")
}

// CheckSeal reads a SEAL event as the trail returned it (raw) and checks
// its signature with pub; ok is false for anything else.
func CheckSeal(raw []byte, pub ed25519.PublicKey) (Seal, bool) {
	seal, canon, payload, ok := readSealEvent(raw)
	sig, _ := payload["signature"].(string)
	if !ok || !verifySig(pub, canon, sig) {
		return Seal{}, false
	}
	return seal, true
}

// readSealEvent reads the seal of a SEAL event (raw: its envelope, or the
// event as the trail returned it): the seal, its canonical JSON (what is
// signed) and the event's payload.
func readSealEvent(raw []byte) (seal Seal, canon []byte, payload map[string]any, ok bool) {
	var e struct {
		Payload map[string]any `json:"payload"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&e); err != nil {
		return Seal{}, nil, nil, false
	}
	canon, ok = payloadObject(e.Payload, "seal")
	if !ok || json.Unmarshal(canon, &seal) != nil {
		return Seal{}, nil, e.Payload, false
	}
	return seal, canon, e.Payload, true
}

// shortDigests is the seal's list of the first shortLen bytes of each
// covered event's digest, in order; ok is false when it does not hold
// Count of them.
func (s Seal) shortDigests() ([]byte, bool) {
	shorts, err := base64.StdEncoding.DecodeString(s.Events)
	return shorts, err == nil && uint64(len(shorts)) == s.Count*shortLen
}

// SealEventBody returns the envelope (the PublishRequest) of a SEAL event
// as the trail returned it, to be recorded as an anchor.
func SealEventBody(raw []byte) ([]byte, error) {
	var e storedEvent
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("reading a SEAL event: %w", err)
	}
	return envelope.Canonical(map[string]any{"kind": e.Kind, "source": e.Source, "timestamp": e.Timestamp, "payload": e.Payload})
}

// LastShortDigest returns the first bytes of the digest of the last event a
// SEAL event (its envelope, as anchored, or as the trail returned it)
// covers, as the seal lists them: enough to tell that event's real copy
// from another producer's event under its key.
func LastShortDigest(raw []byte) ([]byte, error) {
	seal, _, _, ok := readSealEvent(raw)
	if !ok {
		return nil, errors.New("reading a SEAL event: no seal in its payload")
	}
	shorts, ok := seal.shortDigests()
	if !ok || seal.Count == 0 {
		return nil, fmt.Errorf("reading a SEAL event: it lists %d bytes of digests for %d events", len(shorts), seal.Count)
	}
	return shorts[len(shorts)-shortLen:], nil
}
