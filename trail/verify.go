package trail

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

// Item is one event of the trail as a verifier sees it.
type Item struct {
	EventID int64
	// Agent says the event's key claims the agent's identity (a change key
	// of its slot); then SystemID, Slot and Pos are that key's parts.
	Agent    bool
	Key      string
	SystemID string
	Slot     string
	Pos      envelope.Position
	// Operation and Payload are read for SEAL and KEY events.
	Operation string
	Payload   map[string]any
	// Digest is the event's digest (see envelope.Event.Digest), computed
	// from the trail's copy.
	Digest [32]byte
}

// VerifyOptions configure a Verifier.
type VerifyOptions struct {
	// Trusted are public keys pinned by the auditor (a file, or the keys
	// recorded in the audited database). Empty: the chain's first KEY event
	// is trusted, and the report says so.
	Trusted []ed25519.PublicKey
	// AllowUnsigned accepts a trail without any seal (pgaudit-cdc ran with
	// --unsigned) as unsigned rather than failing.
	AllowUnsigned bool
	// Anchor is the newest seal recorded in the audited database, when at
	// hand: the trail must hold it.
	Anchor *Anchor
}

// Finding is one authenticity failure.
type Finding struct {
	EventID    int64  `json:"event_id,omitempty"`
	Detail     string `json:"detail"`
	KnownCause string `json:"known_cause,omitempty"`
}

// VerifyReport is what Finish returns.
type VerifyReport struct {
	Signed        bool      `json:"signed"`
	Seals         int       `json:"seals"`
	Authenticated uint64    `json:"authenticated"`
	Keys          []string  `json:"keys"`
	Notes         []string  `json:"notes,omitempty"`
	Failures      []Finding `json:"failures"`
}

type candidate struct {
	id     int64
	pos    envelope.Position
	short  uint64
	digest [32]byte
}

type stream struct {
	pending []candidate // not yet covered by a seal
	sealed  envelope.Position
	seals   []*sealState
	hasSeal bool
}

type sealState struct {
	seal     Seal
	id       int64
	from, to envelope.Position
	shorts   map[uint64]bool // every event the seal lists
	dead     map[string]string
	missing  map[uint64]string // dead letters not (yet) in the trail → key
}

// Verifier checks a trail's authenticity. Feed it every event in the
// trail's order (Add), then Finish.
type Verifier struct {
	o       VerifyOptions
	r       VerifyReport
	trusted map[string]ed25519.PublicKey
	pinned  bool
	// trustedFirst is the one key taken on trust when none is pinned.
	trustedFirst string
	trustedKey   string // its fingerprint
	chains       map[string]*chainState
	gaps         map[string]bool // generations with a GAP event
	streams      map[string]*stream
	agentN       int
	failures     int
}

type chainState struct {
	// streams are the generations (system identifier:slot) the chain's
	// seals cover, in the order they first appear; newStreamAt the event
	// id of the seal that begins each after the first.
	streams     []string
	newStreamAt []int64
	keys        map[string]ed25519.PublicKey
	first       string // fingerprint of the chain's first key
	seq         uint64
	hash        string
	hashes      map[uint64]string
	lastID      int64
	lastKey     string
}

// maxFindings bounds the findings a report lists one by one.
const maxFindings = 1000

// NewVerifier returns a Verifier.
func NewVerifier(o VerifyOptions) *Verifier {
	v := &Verifier{o: o, trusted: map[string]ed25519.PublicKey{}, chains: map[string]*chainState{}, streams: map[string]*stream{}, gaps: map[string]bool{}}
	for _, k := range o.Trusted {
		v.trusted[Fingerprint(k)] = k
	}
	v.pinned = len(v.trusted) > 0
	return v
}

func (v *Verifier) fail(id int64, known, format string, args ...any) {
	v.failures++
	if len(v.r.Failures) < maxFindings {
		v.r.Failures = append(v.r.Failures, Finding{EventID: id, Detail: fmt.Sprintf(format, args...), KnownCause: known})
	}
}

func streamID(sys, slot string) string { return sys + ":" + slot }

// Add feeds the next event of the trail.
func (v *Verifier) Add(it Item) {
	switch {
	case IsTrailKey(it.Key) && it.Operation == OpKey:
		v.addKey(it)
	case IsTrailKey(it.Key) && it.Operation == OpSeal:
		v.addSeal(it)
	case IsTrailKey(it.Key):
		v.fail(it.EventID, "", "event %d carries a trail key (%s) but is neither a SEAL nor a KEY event", it.EventID, it.Key)
	case it.Agent && it.Operation == envelope.OpGap:
		// A declared gap: completeness fails on it with its cause, sealed
		// or not (it is written before the new generation streams). It
		// is keyed under the new generation, which must have one (Finish).
		v.gaps[streamID(it.SystemID, it.Slot)] = true
	case it.Agent:
		v.agentN++
		st := v.stream(streamID(it.SystemID, it.Slot))
		c := candidate{id: it.EventID, pos: it.Pos, short: binary.BigEndian.Uint64(it.Digest[:shortLen]), digest: it.Digest}
		if st.hasSeal && !st.sealed.Less(it.Pos) {
			v.lateEvent(st, c)
			return
		}
		st.pending = append(st.pending, c)
	}
}

func (v *Verifier) stream(id string) *stream {
	st := v.streams[id]
	if st == nil {
		st = &stream{}
		v.streams[id] = st
	}
	return st
}

func (v *Verifier) chain(name string) *chainState {
	c := v.chains[name]
	if c == nil {
		c = &chainState{keys: map[string]ed25519.PublicKey{}, hashes: map[uint64]string{}}
		v.chains[name] = c
	}
	return c
}

// payloadObject re-encodes payload[name] canonically (what was signed).
func payloadObject(p map[string]any, name string) ([]byte, bool) {
	raw, ok := p[name]
	if !ok {
		return nil, false
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, false
	}
	c, err := envelope.CanonicalRaw(b)
	return c, err == nil
}

func (v *Verifier) addKey(it Item) {
	canon, ok := payloadObject(it.Payload, "key")
	var rec KeyRecord
	if !ok || json.Unmarshal(canon, &rec) != nil {
		v.fail(it.EventID, "", "KEY event %d is malformed", it.EventID)
		return
	}
	pub, err := ParsePublic(rec.PublicKey)
	sig, _ := it.Payload["signature"].(string)
	if err != nil || Fingerprint(pub) != rec.Fingerprint || !verifySig(pub, canon, sig) || it.Key != KeyKey(rec.Chain, rec.Fingerprint) {
		v.fail(it.EventID, "", "KEY event %d is not signed by the key it introduces (%s): it is forged", it.EventID, rec.Fingerprint)
		return
	}
	c := v.chain(rec.Chain)
	if _, known := c.keys[rec.Fingerprint]; known {
		return // the same key again (a KEY event re-sent)
	}
	switch {
	case v.trusted[rec.Fingerprint] != nil:
	case rec.Previous != "" && c.keys[rec.Previous] != nil:
		endorsement, _ := it.Payload["endorsement"].(string)
		if !verifySig(c.keys[rec.Previous], canon, endorsement) {
			v.fail(it.EventID, "", "KEY event %d claims to rotate from key %s, but that key did not sign it: an unknown key", it.EventID, rec.Previous)
			return
		}
	case !v.pinned && c.first == "" && rec.Previous == "" && v.trustedFirst != "" && rec.Fingerprint == v.trustedKey:
		// The key taken on trust, for another chain (two slots that share
		// a key file).
	case !v.pinned && c.first == "" && rec.Previous == "" && v.trustedFirst != "":
		// Anyone can post a KEY event of a chain of their own, and seals
		// with it: unpinned, only one key is taken on trust.
		v.fail(it.EventID, "", "KEY event %d introduces key %s for a second chain, %s, while verify takes on trust only the first key it found (%s): an unknown key; pin the key of every agent that writes to this destination with --public-key, or give --database-url", it.EventID, rec.Fingerprint, rec.Chain, v.trustedFirst)
		return
	case !v.pinned && c.first == "" && rec.Previous == "":
		v.trustedFirst, v.trustedKey = rec.Fingerprint+" of chain "+rec.Chain, rec.Fingerprint
		v.r.Notes = append(v.r.Notes, fmt.Sprintf("trusting key %s, the first key of chain %s found in the trail (event %d): pin it with --public-key to verify against the agent's own key", rec.Fingerprint, rec.Chain, it.EventID))
	case rec.Previous != "":
		v.fail(it.EventID, "", "KEY event %d introduces key %s as the successor of %s, a key this trail does not have: an unknown key (if the old key was lost, pin the new one with --public-key)", it.EventID, rec.Fingerprint, rec.Previous)
		return
	default:
		v.fail(it.EventID, "", "KEY event %d introduces key %s, which is neither pinned nor endorsed by the chain's key %s: an unknown key", it.EventID, rec.Fingerprint, c.first)
		return
	}
	if c.first == "" {
		c.first = rec.Fingerprint
	}
	c.keys[rec.Fingerprint] = pub
	v.r.Keys = append(v.r.Keys, rec.Fingerprint)
}

func (v *Verifier) addSeal(it Item) {
	canon, ok := payloadObject(it.Payload, "seal")
	var seal Seal
	if !ok || json.Unmarshal(canon, &seal) != nil || seal.Seq == 0 {
		v.fail(it.EventID, "", "SEAL event %d is malformed", it.EventID)
		return
	}
	c := v.chain(seal.Chain)
	pub := c.keys[seal.Key]
	if pub == nil {
		pub = v.trusted[seal.Key]
	}
	sig, _ := it.Payload["signature"].(string)
	switch {
	case pub == nil:
		v.fail(it.EventID, "", "SEAL event %d is signed by key %s, which this trail does not introduce and no one pinned: an unknown key", it.EventID, seal.Key)
		return
	case !verifySig(pub, canon, sig) || it.Key != SealKey(seal.Chain, seal.Seq):
		v.fail(it.EventID, "", "SEAL event %d does not carry a valid signature of key %s: it is forged or altered", it.EventID, seal.Key)
		return
	}
	sum := sha256.Sum256(canon)
	h := hex.EncodeToString(sum[:])
	if prev, dup := c.hashes[seal.Seq]; dup {
		if prev != h {
			v.fail(it.EventID, "", "SEAL event %d is a second, different seal %d of chain %s, both signed: the signing key was used by someone else", it.EventID, seal.Seq, seal.Chain)
		}
		return
	}
	if seal.Seq != c.seq+1 && !(c.seq == 0 && v.o.Anchor == nil && seal.Prev == "") {
		v.fail(it.EventID, "", "seal %d of chain %s follows seal %d: seals %d to %d are missing from the trail, and the events they covered cannot be authenticated", seal.Seq, seal.Chain, c.seq, c.seq+1, seal.Seq-1)
	} else if seal.Prev != c.hash && c.seq > 0 {
		v.fail(it.EventID, "", "seal %d of chain %s does not link to seal %d: the chain of seals was rewritten", seal.Seq, seal.Chain, c.seq)
	}
	c.seq, c.hash, c.hashes[seal.Seq], c.lastID, c.lastKey = seal.Seq, h, h, it.EventID, seal.LastKey
	if sid := streamID(seal.SystemID, seal.Slot); !slices.Contains(c.streams, sid) {
		c.streams = append(c.streams, sid)
		if len(c.streams) > 1 {
			c.newStreamAt = append(c.newStreamAt, it.EventID)
		}
	}
	v.r.Seals++
	v.cover(it.EventID, seal)
}

// cover checks the events of seal's range against it.
func (v *Verifier) cover(id int64, seal Seal) {
	st := v.stream(streamID(seal.SystemID, seal.Slot))
	s, expect, ok := v.readSeal(id, seal, st)
	if !ok {
		return
	}
	full, have := v.match(s, expect, st.take(s.from, s.to))
	v.checkSealed(s, expect, full, have)
	st.seals = append(st.seals, s)
	st.sealed, st.hasSeal = s.to, true
}

// readSeal reads seal's range, which must start where st's last seal
// ended, and the short digests of the events it lists, in their order; ok
// is false (reported) when they are unreadable.
func (v *Verifier) readSeal(id int64, seal Seal, st *stream) (s *sealState, expect []uint64, ok bool) {
	s = &sealState{seal: seal, id: id, dead: seal.DeadLetters, shorts: map[uint64]bool{}, missing: map[uint64]string{}}
	if seal.From != "" {
		if s.from, ok = envelope.ParsePosition(seal.From); !ok {
			v.fail(id, "", "SEAL event %d has an unreadable range start %q", id, seal.From)
			return nil, nil, false
		}
	}
	if s.to, ok = envelope.ParsePosition(seal.To); !ok {
		v.fail(id, "", "SEAL event %d has an unreadable range end %q", id, seal.To)
		return nil, nil, false
	}
	if st.hasSeal && s.from != st.sealed {
		v.fail(id, "", "seal %d starts after %s, but the seal before it for these events ended at %s: the events between are not authenticated", seal.Seq, s.from, st.sealed)
	}
	shortBytes, ok := seal.shortDigests()
	if !ok {
		v.fail(id, "", "SEAL event %d lists %d bytes of digests for %d events", id, len(shortBytes), seal.Count)
		return nil, nil, false
	}
	expect = make([]uint64, seal.Count)
	for i := range expect {
		expect[i] = binary.BigEndian.Uint64(shortBytes[i*shortLen:])
		s.shorts[expect[i]] = true
	}
	return s, expect, true
}

// take removes the candidates in the range (from, to] from the pending
// ones and returns them in commit order.
func (st *stream) take(from, to envelope.Position) []candidate {
	var in, rest []candidate
	for _, c := range st.pending {
		if from.Less(c.pos) && !to.Less(c.pos) {
			in = append(in, c)
		} else {
			rest = append(rest, c)
		}
	}
	st.pending = rest
	slices.SortStableFunc(in, func(a, b candidate) int {
		if a.pos.Less(b.pos) {
			return -1
		}
		if b.pos.Less(a.pos) {
			return 1
		}
		return 0
	})
	return in
}

// match pairs the candidates in s's range (in commit order) with the
// digests its seal lists (expect, in the same order), reporting a
// candidate the seal does not list as forged or altered. full holds each
// matched event's digest; have says which were matched.
func (v *Verifier) match(s *sealState, expect []uint64, in []candidate) (full [][32]byte, have []bool) {
	full = make([][32]byte, len(expect))
	have = make([]bool, len(expect))
	i := 0
	for _, c := range in {
		j := i
		for j < len(expect) && expect[j] != c.short {
			j++
		}
		if j == len(expect) {
			if s.shorts[c.short] {
				continue // a second copy of an event already matched: completeness reports duplicates
			}
			v.fail(c.id, "", "event %d (position %s) claims the agent's identity but is not what the agent sealed (seal %d): it is forged or altered", c.id, c.pos, s.seal.Seq)
			continue
		}
		full[j], have[j] = c.digest, true
		i = j + 1
		v.r.Authenticated++
	}
	return full, have
}

// checkSealed reports the events s's seal lists that are not in the
// trail (dead letters it names aside: they are awaited), or else a digest
// over them that is not the sealed one.
func (v *Verifier) checkSealed(s *sealState, expect []uint64, full [][32]byte, have []bool) {
	seal := s.seal
	deadByShort := map[uint64]string{}
	for key, d := range seal.DeadLetters {
		if raw, err := hex.DecodeString(d); err == nil && len(raw) == 32 {
			deadByShort[binary.BigEndian.Uint64(raw)] = key
		}
	}
	missing := 0
	firstMissing := -1
	for j := range expect {
		if have[j] {
			continue
		}
		if key, ok := deadByShort[expect[j]]; ok {
			raw, _ := hex.DecodeString(seal.DeadLetters[key])
			copy(full[j][:], raw)
			s.missing[expect[j]] = key
			continue
		}
		missing++
		if firstMissing < 0 {
			firstMissing = j
		}
	}
	if missing > 0 {
		v.fail(s.id, "", "%d of the %d events sealed by seal %d (%s to %s) are not in the trail (the first is number %d of the range): events were removed", missing, seal.Count, seal.Seq, seal.FirstKey, seal.LastKey, firstMissing+1)
		return
	}
	h := sha256.New()
	for _, d := range full {
		h.Write(d[:])
	}
	if hex.EncodeToString(h.Sum(nil)) != seal.Digest {
		v.fail(s.id, "", "the events sealed by seal %d do not digest to the sealed digest: an event was altered", seal.Seq)
	}
}

// lateEvent checks an event that arrives after the seal of its range: a
// dead letter redelivered, or a copy of an event already there.
func (v *Verifier) lateEvent(st *stream, c candidate) {
	for _, s := range st.seals {
		if !s.from.Less(c.pos) || s.to.Less(c.pos) {
			continue
		}
		if key, ok := s.missing[c.short]; ok {
			if d := s.dead[key]; d == hex.EncodeToString(c.digest[:]) {
				delete(s.missing, c.short)
				v.r.Authenticated++
				return
			}
		}
		if s.shorts[c.short] {
			return // a copy of a sealed event: completeness reports duplicates
		}
		break
	}
	v.fail(c.id, "", "event %d (position %s) claims the agent's identity but no seal covers it as it is: it is forged or altered", c.id, c.pos)
}

// Finish completes the checks.
func (v *Verifier) Finish() VerifyReport {
	v.r.Signed = v.r.Seals > 0 || len(v.r.Keys) > 0
	if !v.r.Signed && v.agentN > 0 {
		if v.o.AllowUnsigned {
			v.r.Notes = append(v.r.Notes, "the trail is unsigned (pgaudit-cdc ran with --unsigned): nothing proves these events are the agent's")
		} else {
			v.fail(0, "", "the trail holds no seal: pgaudit-cdc ran unsigned (--unsigned), or its seals were removed, so none of its %d events is authenticated (pass --allow-unsigned to accept an unsigned trail)", v.agentN)
		}
	} else {
		for id, st := range v.streams {
			for _, s := range st.seals {
				for _, key := range s.missing {
					v.fail(s.id, "the event is a dead letter (pgaudit-cdc dead-letters list): retry it", "the event %s sealed by seal %d is not in the trail", key, s.seal.Seq)
				}
			}
			if len(st.pending) > 0 {
				v.fail(st.pending[0].id, "", "%d events keyed as the agent's (%s) come after its newest seal and are not authenticated, the first being event %d: a running agent seals what it delivers within --seal-interval, so run verify again; if they stay, they are forged", len(st.pending), id, st.pending[0].id)
			}
		}
	}
	// A chain goes on to a new generation only through a capture gap, which
	// writes a GAP event keyed under it before the generation streams. The
	// GAP event is not sealed, so its removal shows here.
	for name, c := range v.chains {
		for i, sid := range c.streams[min(1, len(c.streams)):] {
			if !v.gaps[sid] {
				v.fail(c.newStreamAt[i], "", "chain %s goes on to the events of %s, but the trail holds no GAP event for them: a capture gap always writes one first, so it was removed", name, sid)
			}
		}
	}
	if a := v.o.Anchor; a != nil && !a.IsZero() {
		c := v.chains[a.Chain]
		switch {
		case c == nil || c.seq < a.Seq:
			have := uint64(0)
			if c != nil {
				have = c.seq
			}
			v.fail(0, "", "the audited database records seal %d of chain %s (up to %s), but the trail ends at seal %d: events were cut from the end of the trail", a.Seq, a.Chain, a.ToKey, have)
		case c.hashes[a.Seq] != a.Hash:
			v.fail(0, "", "seal %d of chain %s in the trail differs from the one the audited database recorded: the trail was rewritten", a.Seq, a.Chain)
		}
	}
	if v.failures > len(v.r.Failures) {
		v.r.Failures = append(v.r.Failures, Finding{Detail: fmt.Sprintf("… and %d more", v.failures-len(v.r.Failures))})
	}
	if v.r.Failures == nil {
		v.r.Failures = []Finding{}
	}
	return v.r
}

// Marks are the delivery marks (envelope.DeliveryMarks): a verifier leaves
// them out of an event's digest.
var Marks = envelope.DeliveryMarks

// ItemDigest computes an event's digest from the trail's copy: SHA-256 of
// the canonical JSON of {kind, payload, source, timestamp} with the
// delivery marks left out of payload.metadata.
func ItemDigest(kind, source, timestamp string, payload map[string]any) ([32]byte, error) {
	p := payload
	if meta, ok := payload["metadata"].(map[string]any); ok && hasMark(meta) {
		m := make(map[string]any, len(meta))
		for k, x := range meta {
			if !slices.Contains(Marks, k) {
				m[k] = x
			}
		}
		p = make(map[string]any, len(payload))
		for k, x := range payload {
			p[k] = x
		}
		p["metadata"] = m
	}
	if p == nil {
		p = map[string]any{}
	}
	canonical, err := chain.Canonical(p)
	if err != nil {
		return [32]byte{}, err
	}
	return digestParts(kind, source, timestamp, canonical), nil
}

// storedEvent is an event as the trail returns it, read only as far as
// its envelope (the PublishRequest): the payload stays raw.
type storedEvent struct {
	Kind      string          `json:"kind"`
	Source    string          `json:"source"`
	Timestamp string          `json:"timestamp"`
	Payload   json.RawMessage `json:"payload"`
}

// StoredDigest is the digest of an event as the trail returned it (its
// JSON, with event_id, hashes and any delivery marks). Without marks the
// payload is brought into canonical form in one pass over its bytes (a 20
// MB row is read back at that speed); with them, through Go values.
func StoredDigest(raw []byte) ([32]byte, error) {
	var e storedEvent
	if err := json.Unmarshal(raw, &e); err != nil {
		return [32]byte{}, err
	}
	if !rawHasMark(e.Payload) {
		if canonical, err := pgjson.Canonical(nil, e.Payload); err == nil {
			return digestParts(e.Kind, e.Source, e.Timestamp, canonical), nil
		}
	}
	dec := json.NewDecoder(bytes.NewReader(e.Payload))
	dec.UseNumber()
	var payload map[string]any
	if err := dec.Decode(&payload); err != nil {
		return [32]byte{}, err
	}
	return ItemDigest(e.Kind, e.Source, e.Timestamp, payload)
}

// rawHasMark says whether a payload's JSON may carry a delivery mark.
func rawHasMark(payload []byte) bool {
	for _, m := range Marks {
		if bytes.Contains(payload, []byte(`"`+m+`"`)) {
			return true
		}
	}
	return false
}

// ItemDigestWithPayload is ItemDigest for a caller that has the canonical
// JSON of payload already: when it carries no delivery mark, the digest is
// computed from it without encoding the payload again.
func ItemDigestWithPayload(kind, source, timestamp string, payload map[string]any, canonical []byte) ([32]byte, error) {
	if meta, ok := payload["metadata"].(map[string]any); ok && hasMark(meta) {
		return ItemDigest(kind, source, timestamp, payload)
	}
	return digestParts(kind, source, timestamp, canonical), nil
}

// digestParts is the SHA-256 of the canonical JSON of {kind, payload,
// source, timestamp}, the payload given in canonical form.
func digestParts(kind, source, timestamp string, canonical []byte) [32]byte {
	var buf bytes.Buffer
	buf.Grow(len(canonical) + len(kind) + len(source) + len(timestamp) + 64)
	buf.WriteString(`{"kind":`)
	writeCanonString(&buf, kind)
	buf.WriteString(`,"payload":`)
	buf.Write(canonical)
	buf.WriteString(`,"source":`)
	writeCanonString(&buf, source)
	buf.WriteString(`,"timestamp":`)
	writeCanonString(&buf, timestamp)
	buf.WriteByte('}')
	return sha256.Sum256(buf.Bytes())
}

// writeCanonString writes a string in canonical form (it cannot fail).
func writeCanonString(buf *bytes.Buffer, s string) { _ = writeCanon(buf, s) }

func hasMark(meta map[string]any) bool {
	for _, k := range Marks {
		if _, ok := meta[k]; ok {
			return true
		}
	}
	return false
}

func writeCanon(buf *bytes.Buffer, v any) error { return chain.WriteValue(buf, v, true) }
