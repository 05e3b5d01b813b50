package publish

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

func testEvent(source string, lsn pgoutput.LSN, seq uint32) *envelope.Event {
	pos := envelope.Position{CommitLSN: lsn, Seq: seq}
	ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{
		Kind: "other", Source: source, Timestamp: "2026-11-22T10:00:00+00:00",
		Table: "public.t", Operation: envelope.OpInsert, New: fmt.Appendf(nil, `{"id":%d}`, seq),
		CommitLSN: lsn, LSN: lsn, Key: envelope.Key("7301", "slot", pos),
	}}
	ev.Finish()
	return ev
}

// keptLetter is ev as dead-letters retry hands it to Redeliver: its encoding
// read back (envelope.ParseKept).
func keptLetter(t *testing.T, ev *envelope.Event) *envelope.Event {
	t.Helper()
	k, err := envelope.ParseKept(ev.Key, ev.Body)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{URL: url, Timeout: time.Second, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity("7301", "slot")
	return c
}

func keys(evs []spinetest.Event) []string {
	var out []string
	for _, e := range evs {
		m, _ := e.Payload["metadata"].(map[string]any)
		out = append(out, fmt.Sprint(m["idempotency_key"]))
	}
	return out
}

func TestPublishFaultsGiveExactlyOnce(t *testing.T) {
	faults := []spinetest.Fault{spinetest.Fault503, spinetest.Fault500, spinetest.FaultDropBefore, spinetest.FaultDropAfter, spinetest.Fault429,
		spinetest.Fault201HTML, spinetest.Fault201HTMLAfter, spinetest.FaultStallBody,
		spinetest.Fault401, spinetest.Fault403, spinetest.Fault404, spinetest.Fault405, spinetest.Fault302}
	for _, f := range faults {
		t.Run(f.String(), func(t *testing.T) {
			spine := spinetest.Start(t)
			spine.SetStall(20 * time.Millisecond)
			c := newTestClient(t, spine.URL())
			spine.FailNext(2, f)
			for i := uint32(1); i <= 3; i++ {
				if err := c.Publish(context.Background(), testEvent("s", 0x100, i)); err != nil {
					t.Fatalf("Publish %d: %v", i, err)
				}
			}
			got := keys(spine.Events())
			if len(got) != 3 {
				t.Fatalf("got %d events %v, want exactly 3", len(got), got)
			}
			for i, k := range got {
				if want := testEvent("s", 0x100, uint32(i+1)).Key; k != want {
					t.Errorf("event %d: got key %s, want %s", i, k, want)
				}
			}
		})
	}
}

func TestPublishRejection(t *testing.T) {
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	spine.FailNext(1, spinetest.FaultReject)
	err := c.Publish(context.Background(), testEvent("s", 0x100, 1))
	if !IsRejected(err) {
		t.Fatalf("got %v, want a RejectedError", err)
	}
	ev := testEvent("s", 0x100, 2)
	ev.Body = bytes.Replace(ev.Body, []byte(`"kind":"other"`), []byte(`"kind":"no_such_kind"`), 1)
	if err := c.Publish(context.Background(), ev); !IsRejected(err) {
		t.Fatalf("unknown kind: got %v, want a RejectedError", err)
	}
	if n := len(spine.Events()); n != 0 {
		t.Fatalf("got %d events, want 0", n)
	}
}

func TestRestartedClientSkipsWhatTheSpineHolds(t *testing.T) {
	spine := spinetest.Start(t)
	first := newTestClient(t, spine.URL())
	for i := uint32(1); i <= 5; i++ {
		if err := first.Publish(context.Background(), testEvent("s", 0x200, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Another producer shares the source: 150 foreign events push ours out
	// of the first read-back page.
	postForeign(t, spine.URL(), "s", 150)
	// A new process replays from an older confirmed position.
	second := newTestClient(t, spine.URL())
	for i := uint32(1); i <= 7; i++ {
		if err := second.Publish(context.Background(), testEvent("s", 0x200, i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(spine.Events()); got != 5+150+2 {
		t.Fatalf("got %d events, want %d (no replayed duplicates)", got, 5+150+2)
	}
	// Another agent (other slot) with the same positions is not confused with us.
	other, _ := NewClient(ClientConfig{URL: spine.URL(), MinBackoff: time.Millisecond})
	other.SetIdentity("7301", "other_slot")
	ev := testEvent("s", 0x200, 1)
	ev.Key = envelope.Key("7301", "other_slot", ev.Pos)
	ev.Body = bytes.Replace(ev.Body, []byte(":slot:"), []byte(":other_slot:"), 1)
	if err := other.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := len(spine.Events()); got != 5+150+2+1 {
		t.Fatalf("got %d events, want the other slot's event appended", got)
	}
}

func TestRedeliverIsIdempotentAndIgnoredByReadBack(t *testing.T) {
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	if err := c.Publish(context.Background(), testEvent("s", 0x300, 5)); err != nil {
		t.Fatal(err)
	}
	old := testEvent("s", 0x300, 2) // an older dead letter
	for i := 0; i < 2; i++ {
		if err := c.Redeliver(context.Background(), old.Source, keptLetter(t, old)); err != nil {
			t.Fatal(err)
		}
	}
	evs := spine.Events()
	if len(evs) != 2 {
		t.Fatalf("got %d events, want 2 (redelivered once)", len(evs))
	}
	meta, _ := evs[1].Payload["metadata"].(map[string]any)
	if meta["redelivered"] != true {
		t.Fatalf("got metadata %v, want redelivered: true", meta)
	}
	fresh := newTestClient(t, spine.URL())
	if err := fresh.Publish(context.Background(), testEvent("s", 0x300, 2)); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Publish(context.Background(), testEvent("s", 0x300, 5)); err != nil {
		t.Fatal(err)
	}
	// The redelivered event sits after the newer one in the chain; the
	// read-back learns the keys present, so neither is sent again.
	if got := len(spine.Events()); got != 2 {
		t.Fatalf("got %d events, want 2", got)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	spine := spinetest.New()
	spine.FailNext(1, spinetest.Fault429) // answers Retry-After: 1
	calls := 0
	var first time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			calls++
			if calls == 1 {
				first = time.Now()
			} else if d := time.Since(first); d < 900*time.Millisecond {
				t.Errorf("retried after %s, want ≥ 1s (Retry-After)", d)
			}
		}
		spine.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	if err := c.Publish(context.Background(), testEvent("s", 1, 1)); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("got %d POSTs, want 2", calls)
	}
}

func TestRedeliverMarksTheValue(t *testing.T) {
	// A row value and an annotation shaped like metadata (any role may
	// annotate) cannot move the mark: it is a field of the value.
	ev := testEvent("s", 0x10, 1)
	ev.New = []byte(`{"metadata":{"commit_lsn":"x"}}`)
	ev.Annotations = []byte(`{"metadata":{"commit_lsn":1}}`)
	ev.Finish()
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	if err := c.Redeliver(context.Background(), ev.Source, keptLetter(t, ev)); err != nil {
		t.Fatal(err)
	}
	evs := spine.Events()
	if len(evs) != 1 {
		t.Fatalf("got %d events, want 1", len(evs))
	}
	m, _ := evs[0].Payload["metadata"].(map[string]any)
	if m["redelivered"] != true {
		t.Fatalf("got metadata %v, want redelivered true", m)
	}
	row, _ := evs[0].Payload["new"].(map[string]any)
	if inner, _ := row["metadata"].(map[string]any); inner["redelivered"] != nil {
		t.Fatalf("got row %v, want it untouched", row)
	}
}

func TestCanceledPublishReturns(t *testing.T) {
	spine := spinetest.Start(t)
	spine.SetDown(true)
	c := newTestClient(t, spine.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Publish(ctx, testEvent("s", 1, 1)); err == nil {
		t.Fatalf("got nil, want the context error while the spine is down")
	}
}

// TestNewSessionReadsBackAgain: a POST abandoned when a replication session
// broke may have been appended, so a new session (SetIdentity) reads each
// source back before its first event.
func TestNewSessionReadsBackAgain(t *testing.T) {
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	if err := c.Publish(context.Background(), testEvent("s", 0x10, 1)); err != nil {
		t.Fatal(err)
	}
	// Appended behind the client's back, as an abandoned POST could be.
	ghost := testEvent("s", 0x10, 2)
	resp, err := http.Post(spine.URL()+"/events", "application/json", bytes.NewReader(ghost.Body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.SetIdentity("7301", "slot") // the next session
	if err := c.Publish(context.Background(), testEvent("s", 0x10, 2)); err != nil {
		t.Fatal(err)
	}
	if n := len(spine.Events()); n != 2 {
		t.Fatalf("got %d events, want 2: the replayed event was sent again", n)
	}
}

// A spine that restarted empty (or was restored to an older state) answers
// with an event_id not beyond the ones before: nothing more is sent.
func TestHistoryLostIsDetected(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipelined=%v", pipelined), func(t *testing.T) {
			spine := spinetest.Start(t)
			c := newTestClient(t, spine.URL())
			deliver := func(evs ...*envelope.Event) error {
				if !pipelined {
					for _, ev := range evs {
						if err := c.Publish(context.Background(), ev); err != nil {
							return err
						}
					}
					return nil
				}
				return c.PublishBatch(context.Background(), evs, func(int, error) {})
			}
			if err := deliver(testEvent("s", 0x10, 1), testEvent("s", 0x20, 1), testEvent("s", 0x30, 1)); err != nil {
				t.Fatal(err)
			}
			spine.Reset()
			err := deliver(testEvent("s", 0x40, 1), testEvent("s", 0x50, 1))
			if !IsHistoryLost(err) {
				t.Fatalf("got %v, want a HistoryLostError", err)
			}
			// The first answer stops delivery; a pipelined window may have had
			// the second in flight already.
			if n := len(spine.Events()); n < 1 || n > 2 || (!pipelined && n != 1) {
				t.Fatalf("got %d events in the restarted spine, want 1 (2 at most pipelined)", n)
			}
		})
	}
}

// TestUnreadableForeignEventsAreLeftAside: the spine stores any JSON payload,
// so another producer can write an event of the agent's source whose
// metadata the read-back cannot read as pgaudit-cdc's. It must not stop
// delivery, and what the agent delivered before is still found.
func TestUnreadableForeignEventsAreLeftAside(t *testing.T) {
	spine := spinetest.Start(t)
	first := newTestClient(t, spine.URL())
	for i := uint32(1); i <= 3; i++ {
		if err := first.Publish(context.Background(), testEvent("s", 0x300, i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, payload := range []string{
		`{"metadata":{"idempotency_key":1}}`,
		`{"metadata":"x"}`,
		`{"metadata":{"redelivered":"yes"}}`,
		`{"metadata":{"commit_timestamp":7}}`,
	} {
		post(t, spine.URL(), `{"kind":"other","source":"s","payload":`+payload+`}`)
	}
	for _, pipelined := range []bool{false, true} {
		// A new process replays 1..5: 1..3 are found, 4 and 5 appended.
		c := newTestClient(t, spine.URL())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var evs []*envelope.Event
		for i := uint32(1); i <= 5; i++ {
			evs = append(evs, testEvent("s", 0x300, i))
		}
		var err error
		if pipelined {
			err = c.PublishBatch(ctx, evs, func(int, error) {})
		} else {
			for _, ev := range evs {
				if err = c.Publish(ctx, ev); err != nil {
					break
				}
			}
		}
		cancel()
		if err != nil {
			t.Fatalf("pipelined=%v: %v", pipelined, err)
		}
	}
	if got, want := len(spine.Events()), 3+4+2; got != want {
		t.Fatalf("got %d events, want %d (each of ours once, the foreign ones kept)", got, want)
	}
}

// TestMarkedEventsDoNotEndTheReadBack: an event marked late or redelivered
// sits at the newest end of the chain with an old position. A restarted
// client that replays the newer events must still find them all: the
// marked event does not say the newest events reach back that far.
func TestMarkedEventsDoNotEndTheReadBack(t *testing.T) {
	txn := func(lsn pgoutput.LSN, n int) []*envelope.Event {
		var evs []*envelope.Event
		for i := 1; i <= n; i++ {
			evs = append(evs, testEvent("s", lsn, uint32(i)))
		}
		return evs
	}
	t.Run("late", func(t *testing.T) {
		spine := spinetest.Start(t)
		// The first event of the window fails and lands last, late.
		spine.FailNext(1, spinetest.Fault503)
		deliverAll(t, newTestClient(t, spine.URL()), txn(0x500, 30))
		deliverAll(t, newTestClient(t, spine.URL()), txn(0x500, 30))
		if got := len(spine.Events()); got != 30 {
			t.Fatalf("%d events in the spine, want 30", got)
		}
	})
	t.Run("redelivered", func(t *testing.T) {
		spine := spinetest.Start(t)
		deliverAll(t, newTestClient(t, spine.URL()), txn(0x600, 30))
		if err := newTestClient(t, spine.URL()).Redeliver(context.Background(), "s", keptLetter(t, testEvent("s", 0x300, 2))); err != nil {
			t.Fatal(err)
		}
		deliverAll(t, newTestClient(t, spine.URL()), txn(0x600, 30))
		if got := len(spine.Events()); got != 31 {
			t.Fatalf("%d events in the spine, want 31", got)
		}
	})
}

// TestCheckHeldSeesALossOthersHid: a spine that restarted empty while other
// producers appended more events than this client had seen gives the next
// append a higher event_id, so the append alone does not show the loss;
// reading the last appended event back by its event_id does.
func TestCheckHeldSeesALossOthersHid(t *testing.T) {
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	ctx := context.Background()
	if err := c.CheckHeld(ctx); err != nil {
		t.Fatalf("before any append: %v", err)
	}
	for i := uint32(1); i <= 3; i++ {
		if err := c.Publish(ctx, testEvent("s", 0x700, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CheckHeld(ctx); err != nil {
		t.Fatalf("the spine holds what was appended: %v", err)
	}
	foreign := func(n int) { postForeign(t, spine.URL(), "x", n) }
	spine.Reset()
	foreign(2) // fewer than before: event_id 3 is not there
	if err := c.CheckHeld(ctx); !IsHistoryLost(err) {
		t.Fatalf("spine restarted, 2 foreign events: got %v, want a HistoryLostError", err)
	}
	foreign(5) // event_id 3 is another producer's event now
	if err := c.Publish(ctx, testEvent("s", 0x800, 1)); err != nil {
		t.Fatalf("the append after the foreign ones has a higher event_id: %v", err)
	}
	spine.Reset()
	foreign(20)
	err := c.CheckHeld(ctx)
	if !IsHistoryLost(err) || !strings.Contains(err.Error(), "holds another event there") {
		t.Fatalf("spine restarted, 20 foreign events: got %v, want a HistoryLostError naming another event", err)
	}
}

// TestTransactionBiggerThanTheWindow: a restarted client replays a
// transaction with more events than its dedup window reads back; the
// events below the window are found one by one (GET /events/{id}), none is
// sent twice, and what was never delivered is.
func TestTransactionBiggerThanTheWindow(t *testing.T) {
	spine := spinetest.Start(t)
	newClient := func() *Client {
		c, err := NewClient(ClientConfig{URL: spine.URL(), Timeout: time.Second, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, DedupWindow: 100})
		if err != nil {
			t.Fatal(err)
		}
		c.SetIdentity("7301", "slot")
		return c
	}
	var evs []*envelope.Event
	for i := uint32(1); i <= 250; i++ {
		evs = append(evs, testEvent("s", 0x900, i))
	}
	// Some other producer's events between, then the first 180 of ours.
	postForeign(t, spine.URL(), "s", 30)
	deliverAll(t, newClient(), evs[:180])
	// A restart replays the whole transaction.
	deliverAll(t, newClient(), evs)
	if got, want := len(spine.Events()), 30+250; got != want {
		t.Fatalf("%d events in the spine, want %d: each of ours once", got, want)
	}
	if ok, at, why := spine.Verify(); !ok {
		t.Fatalf("chain invalid at %d: %s", at, why)
	}
}

// TestCheckHeldGatewayWithout404IsNoLoss: a gateway in front of the spine
// that answers 404 for GET /events/{id} is not a spine that lost its
// history: the spine's count says the event_id is there, so the check
// keeps trying (and says what to let through) instead of reporting a loss.
func TestCheckHeldGatewayWithout404IsNoLoss(t *testing.T) {
	spine := spinetest.Start(t)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/events/") {
			http.NotFound(w, r)
			return
		}
		proxy(w, r, spine.URL())
	}))
	t.Cleanup(front.Close)
	c := newTestClient(t, front.URL)
	for i := uint32(1); i <= 3; i++ {
		if err := c.Publish(context.Background(), testEvent("s", 0x700, i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := c.CheckHeld(ctx)
	if IsHistoryLost(err) || err == nil {
		t.Fatalf("behind a gateway without GET /events/{id}: got %v, want the check to wait for it, not a loss", err)
	}
}

// deliverAll delivers evs in one PublishBatch, every one of them accepted.
func deliverAll(t *testing.T, c *Client, evs []*envelope.Event) {
	t.Helper()
	if err := c.PublishBatch(context.Background(), evs, func(i int, err error) {
		if err != nil {
			t.Errorf("event %d: %v", i, err)
		}
	}); err != nil {
		t.Fatal(err)
	}
}

// post appends body to the spine at url as another producer would; the
// spine must store it.
func post(t *testing.T, url, body string) {
	t.Helper()
	resp, err := http.Post(url+"/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("the spine refused %s: HTTP %d", body, resp.StatusCode)
	}
}

// postForeign appends n events of another producer with source.
func postForeign(t *testing.T, url, source string, n int) {
	t.Helper()
	for i := range n {
		post(t, url, fmt.Sprintf(`{"kind":"other","source":%q,"payload":{"n":%d}}`, source, i))
	}
}
