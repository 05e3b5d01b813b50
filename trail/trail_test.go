package trail

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// stored is one event as a trail holds it: its JSON, as the spine returns it.
type stored struct {
	id   int64
	body []byte
}

func change(t *testing.T, lsn pgoutput.LSN, seq uint32, prev envelope.Position, row string) *envelope.Event {
	t.Helper()
	pos := envelope.Position{CommitLSN: lsn, Seq: seq}
	ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{
		Kind: "other", Source: "books", Timestamp: "2026-12-01T10:00:00+00:00",
		Table: "public.acct", Operation: envelope.OpInsert, New: []byte(row),
		CommitLSN: lsn, LSN: lsn, Key: envelope.Key("7301", "pgaudit_cdc", pos), Linked: true, Prev: prev, TxIndex: seq, TxEvents: seq,
	}}
	ev.Finish()
	return ev
}

// keyedTrail starts a trail of chain 7301:pgaudit_cdc: a new key, its KEY
// event (handed to add), and a sealer of the first generation.
func keyedTrail(t *testing.T, add func(*envelope.Event)) (*Key, *Sealer, time.Time) {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	kev, err := KeyEvent(key, nil, "7301:pgaudit_cdc", now)
	if err != nil {
		t.Fatal(err)
	}
	add(kev)
	return key, NewSealer(key, "7301:pgaudit_cdc", Anchor{}, "7301", "pgaudit_cdc"), now
}

// honest writes n single-event transactions and seals every `every`
// events; it returns the trail and the key.
func honest(t *testing.T, n, every int) ([]stored, *Key) {
	t.Helper()
	var out []stored
	add := func(ev *envelope.Event) { out = append(out, stored{id: int64(len(out) + 1), body: ev.Body}) }
	key, s, now := keyedTrail(t, add)
	var prev envelope.Position
	for i := 1; i <= n; i++ {
		ev := change(t, pgoutput.LSN(0x1000*i), 1, prev, fmt.Sprintf(`{"balance":%d,"id":%d}`, i*10, i))
		prev = ev.Pos
		add(ev)
		s.Fold(ev, false, now)
		if i%every == 0 || i == n {
			seal, _, err := s.Close(now)
			if err != nil {
				t.Fatal(err)
			}
			add(seal)
		}
	}
	return out, key
}

func verifyTrail(t *testing.T, trail []stored, o VerifyOptions) VerifyReport {
	t.Helper()
	v := NewVerifier(o)
	for _, e := range trail {
		dec := json.NewDecoder(bytes.NewReader(e.body))
		dec.UseNumber()
		var ev struct {
			Kind, Source, Timestamp string
			Payload                 map[string]any
		}
		if err := dec.Decode(&ev); err != nil {
			t.Fatal(err)
		}
		meta, _ := ev.Payload["metadata"].(map[string]any)
		key, _ := meta["idempotency_key"].(string)
		op, _ := ev.Payload["operation"].(string)
		it := Item{EventID: e.id, Key: key, Operation: op, Payload: ev.Payload}
		if sys, slot, pos, ok := envelope.ParseKey(key); ok {
			it.Agent, it.SystemID, it.Slot, it.Pos = true, sys, slot, pos
		}
		d, err := ItemDigest(ev.Kind, ev.Source, ev.Timestamp, ev.Payload)
		if err != nil {
			t.Fatal(err)
		}
		it.Digest = d
		v.Add(it)
	}
	return v.Finish()
}

func failures(r VerifyReport) string {
	var b strings.Builder
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "[%d] %s (%s)\n", f.EventID, f.Detail, f.KnownCause)
	}
	return b.String()
}

func TestHonestTrailVerifies(t *testing.T) {
	trail, key := honest(t, 25, 10)
	for _, o := range []VerifyOptions{{}, {Trusted: []ed25519.PublicKey{key.Public()}}} {
		r := verifyTrail(t, trail, o)
		if len(r.Failures) != 0 || r.Authenticated != 25 || r.Seals != 3 {
			t.Fatalf("got %d authenticated, %d seals, failures:\n%s; want 25, 3, none", r.Authenticated, r.Seals, failures(r))
		}
	}
}

func reencode(t *testing.T, body []byte, edit func(*envelope.Envelope)) []byte {
	t.Helper()
	env, err := envelope.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	edit(&env)
	return env.Encode()
}

func TestAttacksAreFound(t *testing.T) {
	tests := []struct {
		name   string
		attack func(t *testing.T, trail []stored, key *Key) ([]stored, VerifyOptions)
		want   string
	}{
		{"forged event inside a sealed transaction, marked late", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			forged := reencode(t, tr[3].body, func(e *envelope.Envelope) {
				e.Operation, e.New, e.Old, e.Late = envelope.OpDelete, nil, []byte(`{"id":99}`), true
				e.Key = envelope.Key("7301", "pgaudit_cdc", envelope.Position{CommitLSN: e.CommitLSN, Seq: 7})
			})
			return append(tr, stored{id: int64(len(tr) + 1), body: forged}), VerifyOptions{}
		}, "forged or altered"},
		{"forged event under a made-up system identifier", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			forged := reencode(t, tr[3].body, func(e *envelope.Envelope) {
				e.New = []byte(`{"balance":1000000,"id":9,"owner":"mallory"}`)
				e.Key, e.Linked = envelope.Key("6666", "pgaudit_cdc", envelope.Position{CommitLSN: 5, Seq: 1}), true
			})
			return append(tr, stored{id: int64(len(tr) + 1), body: forged}), VerifyOptions{}
		}, "not authenticated"},
		{"an event altered in place", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			tr[5].body = reencode(t, tr[5].body, func(e *envelope.Envelope) { e.New = []byte(`{"balance":1,"id":5}`) })
			return tr, VerifyOptions{}
		}, "forged or altered"},
		{"a transaction dropped and the next one re-linked", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			// tr[4] is the fourth change (0/4000); the fifth names the third.
			next := reencode(t, tr[5].body, func(e *envelope.Envelope) {
				e.Prev = envelope.Position{CommitLSN: 0x3000, Seq: 1}
			})
			out := append([]stored{}, tr[:4]...)
			out = append(out, stored{id: tr[5].id, body: next})
			return append(out, tr[6:]...), VerifyOptions{}
		}, "not in the trail"},
		{"the tail cut, with its seal", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			a := &Anchor{Chain: "7301:pgaudit_cdc", Seq: 3}
			return tr[:len(tr)-3], VerifyOptions{Anchor: a}
		}, "cut from the end"},
		{"a seal by another key", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			other, _ := GenerateKey()
			s := NewSealer(other, "7301:pgaudit_cdc", Anchor{}, "7301", "pgaudit_cdc")
			ev := change(t, 0x99000, 1, envelope.Position{}, `{"id":1}`)
			s.Fold(ev, false, time.Now())
			seal, _, _ := s.Close(time.Now())
			return append(tr, stored{id: int64(len(tr) + 1), body: ev.Body}, stored{id: int64(len(tr) + 2), body: seal.Body}), VerifyOptions{}
		}, "unknown key"},
		{"a second chain of another producer's making, unpinned", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			other, _ := GenerateKey()
			now := time.Now()
			kev, err := KeyEvent(other, nil, "6666:evil", now)
			if err != nil {
				t.Fatal(err)
			}
			s := NewSealer(other, "6666:evil", Anchor{}, "7301", "pgaudit_cdc.g9")
			ev := change(t, 0x99000, 1, envelope.Position{}, `{"balance":1000000,"id":1}`)
			ev.Key = envelope.Key("7301", "pgaudit_cdc.g9", ev.Pos)
			ev.Finish()
			s.Fold(ev, false, now)
			seal, _, _ := s.Close(now)
			n := int64(len(tr))
			return append(tr, stored{id: n + 1, body: kev.Body}, stored{id: n + 2, body: ev.Body}, stored{id: n + 3, body: seal.Body}), VerifyOptions{}
		}, "second chain"},
		{"a second chain under the trusted key itself is no forgery, a third key is", func(t *testing.T, tr []stored, key *Key) ([]stored, VerifyOptions) {
			now := time.Now()
			same, err := KeyEvent(key, nil, "7301:other_slot", now)
			if err != nil {
				t.Fatal(err)
			}
			other, _ := GenerateKey()
			third, err := KeyEvent(other, nil, "6666:evil", now)
			if err != nil {
				t.Fatal(err)
			}
			n := int64(len(tr))
			return append(tr, stored{id: n + 1, body: same.Body}, stored{id: n + 2, body: third.Body}), VerifyOptions{}
		}, "second chain, 6666:evil"},
		{"a pinned key that is not the trail's", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			other, _ := GenerateKey()
			return tr, VerifyOptions{Trusted: []ed25519.PublicKey{other.Public()}}
		}, "unknown key"},
		{"an unsigned trail", func(t *testing.T, tr []stored, _ *Key) ([]stored, VerifyOptions) {
			var out []stored
			for _, e := range tr {
				if !bytes.Contains(e.body, []byte(`"pgaudit-cdc-`)) {
					out = append(out, e)
				}
			}
			return out, VerifyOptions{}
		}, "holds no seal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, key := honest(t, 25, 10)
			tr, o := tt.attack(t, tr, key)
			r := verifyTrail(t, tr, o)
			if !strings.Contains(failures(r), tt.want) {
				t.Fatalf("got failures:\n%s\nwant one saying %q", failures(r), tt.want)
			}
		})
	}
}

func TestDeadLetterRedelivered(t *testing.T) {
	key, _ := GenerateKey()
	now := time.Now()
	kev, _ := KeyEvent(key, nil, "c", now)
	s := NewSealer(key, "c", Anchor{}, "7301", "pgaudit_cdc")
	a := change(t, 0x1000, 1, envelope.Position{}, `{"id":1}`)
	b := change(t, 0x2000, 1, a.Pos, `{"id":2}`)
	s.Fold(a, false, now)
	s.Fold(b, true, now)
	seal, _, _ := s.Close(now)
	tr := []stored{{1, kev.Body}, {2, a.Body}, {3, seal.Body}}
	if r := verifyTrail(t, tr, VerifyOptions{}); !strings.Contains(failures(r), "dead letter") {
		t.Fatalf("pending: got %s, want the dead letter named", failures(r))
	}
	b.MarkRedelivered()
	tr = append(tr, stored{4, b.Body})
	if r := verifyTrail(t, tr, VerifyOptions{}); len(r.Failures) != 0 || r.Authenticated != 2 {
		t.Fatalf("redelivered: got %d authenticated, failures %s; want 2, none", r.Authenticated, failures(r))
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	key, _ := GenerateKey()
	pemBytes, _ := key.MarshalPEM()
	for _, s := range []string{fmt.Sprint(key), fmt.Sprintf("%v %+v %#v %s %x", key, key, key, key, key)} {
		if strings.Contains(s, string(pemBytes[30:60])) || !strings.Contains(s, "SHA256:") {
			t.Fatalf("got %q, want the fingerprint only", s)
		}
	}
	back, err := ParseKey(pemBytes)
	if err != nil || back.Fingerprint() != key.Fingerprint() {
		t.Fatalf("ParseKey: got %v, %v", back, err)
	}
}

func TestAnchorFileKeepsTheNewest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "anchors.jsonl")
	for _, seq := range []uint64{1, 3, 2} {
		a := Anchor{Chain: "c", Seq: seq, Hash: fmt.Sprint("h", seq), To: envelope.Position{CommitLSN: pgoutput.LSN(seq), Seq: 1}, ToKey: "k", Total: seq * 10}
		if err := AppendAnchor(path, a); err != nil {
			t.Fatal(err)
		}
	}
	a, ok, err := LastAnchor(path)
	if err != nil || !ok || a.Seq != 3 || a.Hash != "h3" || a.Total != 30 || a.To.CommitLSN != 3 {
		t.Fatalf("got %+v, %v, %v; want seal 3", a, ok, err)
	}
}

// TestRemovedGapEventIsFound: a capture gap writes a GAP event, keyed under
// the new generation, before that generation streams; it is not sealed.
// A chain whose seals go on to a new generation without one had it
// removed.
func TestRemovedGapEventIsFound(t *testing.T) {
	var tr []stored
	add := func(ev *envelope.Event) { tr = append(tr, stored{id: int64(len(tr) + 1), body: ev.Body}) }
	key, s, now := keyedTrail(t, add)
	var prev envelope.Position
	for i := 1; i <= 3; i++ {
		ev := change(t, pgoutput.LSN(0x1000*i), 1, prev, fmt.Sprintf(`{"id":%d}`, i))
		prev = ev.Pos
		add(ev)
		s.Fold(ev, false, now)
	}
	seal, anchor, err := s.Close(now)
	if err != nil {
		t.Fatal(err)
	}
	add(seal)
	gap, err := envelope.NewGapEvent("7301", "pgaudit_cdc.g1", 0x9000, envelope.Gap{Reason: "slot_dropped", Detail: "the slot was dropped"}, now)
	if err != nil {
		t.Fatal(err)
	}
	gapAt := len(tr)
	add(gap)
	s = NewSealer(key, "7301:pgaudit_cdc", anchor, "7301", "pgaudit_cdc.g1")
	prev = envelope.Position{}
	for i := 1; i <= 3; i++ {
		ev := change(t, pgoutput.LSN(0x9000+0x1000*i), 1, prev, fmt.Sprintf(`{"id":%d}`, 10+i))
		ev.Key = envelope.Key("7301", "pgaudit_cdc.g1", ev.Pos)
		ev.Finish()
		prev = ev.Pos
		add(ev)
		s.Fold(ev, false, now)
	}
	seal, _, err = s.Close(now)
	if err != nil {
		t.Fatal(err)
	}
	add(seal)

	if r := verifyTrail(t, tr, VerifyOptions{}); len(r.Failures) != 0 {
		t.Fatalf("the trail with its GAP event: got failures\n%s", failures(r))
	}
	without := append(append([]stored{}, tr[:gapAt]...), tr[gapAt+1:]...)
	if r := verifyTrail(t, without, VerifyOptions{}); !strings.Contains(failures(r), "no GAP event") {
		t.Fatalf("the trail without its GAP event: got failures\n%s\nwant one saying it was removed", failures(r))
	}
}

// TestSecondChainUnderTheTrustedKey: two slots that share one key file
// make two chains under one key; unpinned, the key taken on trust covers
// both.
func TestSecondChainUnderTheTrustedKey(t *testing.T) {
	tr, key := honest(t, 5, 5)
	same, err := KeyEvent(key, nil, "7301:other_slot", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tr = append(tr, stored{id: int64(len(tr) + 1), body: same.Body})
	if r := verifyTrail(t, tr, VerifyOptions{}); len(r.Failures) != 0 {
		t.Fatalf("got failures\n%s", failures(r))
	}
}
