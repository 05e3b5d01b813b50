package relay

import (
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// TestEventOfIsWhatTheAgentSent: a stream message turned back into an
// event is byte for byte the PublishRequest the agent built, so the
// spine's copy digests as the trail's seals say; a message altered in the
// stream is refused.
func TestEventOfIsWhatTheAgentSent(t *testing.T) {
	pos := envelope.Position{CommitLSN: pgoutput.LSN(0x16B3748), Seq: 2}
	ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{
		Kind: "other", Source: "caf\u00e9 books", Timestamp: "2026-12-06T10:00:00.123456+00:00",
		Table: "public.ledger", Operation: envelope.OpUpdate, New: []byte(`{"id":1,"note":"\u2028 \"q\""}`), Old: []byte(`{"id":1,"note":null}`),
		CommitLSN: pos.CommitLSN, LSN: pos.CommitLSN, Key: envelope.Key("7301", "pgaudit_cdc", pos),
		Fields: []envelope.Field{{Name: "cascade", Value: []byte(`["public.a"]`)}},
	}}
	ev.Finish()
	m := natsjs.Build(ev, natsjs.Link{Seq: 6, Hash: chain.Genesis})
	got, err := eventOf(7, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Body) != string(ev.Body) {
		t.Fatalf("relayed body\n%s\nwant\n%s", got.Body, ev.Body)
	}
	if got.Digest() != ev.Digest() {
		t.Fatal("the relayed event digests differently")
	}
	for i, bad := range [][]byte{
		[]byte(`{"not":"chained"}`),
		[]byte(strings.Replace(string(m.Data), "public.ledger", "public.ledgex", 1)),
	} {
		if _, err := eventOf(7, bad); err == nil {
			t.Errorf("case %d: an altered message was relayed", i)
		}
	}
	if _, err := eventOf(8, m.Data); err == nil {
		t.Error("a message at another sequence than its event_id was relayed")
	}
}
