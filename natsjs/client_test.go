package natsjs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

func testEvent(i int) *envelope.Event {
	pos := envelope.Position{CommitLSN: pgoutput.LSN(0x1000 + 0x100*(i/3)), Seq: uint32(i%3 + 1)}
	ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{
		Kind: "other", Source: "pgaudit-cdc-test", Timestamp: "2026-12-06T10:00:00+00:00",
		Table: "public.t", Operation: envelope.OpInsert, New: fmt.Appendf(nil, `{"id":%d,"v":"caf\u00e9"}`, i),
		CommitLSN: pos.CommitLSN, LSN: pos.CommitLSN, Key: envelope.Key("7301", "slot", pos),
	}}
	ev.Finish()
	return ev
}

func events(from, to int) []*envelope.Event {
	var out []*envelope.Event
	for i := from; i < to; i++ {
		out = append(out, testEvent(i))
	}
	return out
}

type counts struct {
	mu                       sync.Mutex
	skipped, forged, retries int
}

func newClient(t *testing.T, urls []string, adjust ...func(*Config)) (*Client, *counts) {
	t.Helper()
	n := &counts{}
	cfg := Config{URLs: urls, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)), MinBackoff: 5 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, AckTimeout: 2 * time.Second,
		Hooks: publish.Hooks{
			Skipped: func(*envelope.Event) { n.mu.Lock(); n.skipped++; n.mu.Unlock() },
			Forgery: func(*envelope.Event, int64) { n.mu.Lock(); n.forged++; n.mu.Unlock() },
			Retry:   func(string, time.Duration) { n.mu.Lock(); n.retries++; n.mu.Unlock() },
		}}
	for _, a := range adjust {
		a(&cfg)
	}
	c, err := Connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.SetIdentity("7301", "slot")
	return c, n
}

// deliver publishes evs in batches of 300 and fails the test on an error or
// an event settled twice or out of order.
func deliver(t *testing.T, ctx context.Context, c *Client, evs []*envelope.Event) error {
	t.Helper()
	for from := 0; from < len(evs); from += 300 {
		batch := evs[from:min(from+300, len(evs))]
		next := 0
		err := c.PublishBatch(ctx, batch, func(i int, err error) {
			if i != next || err != nil {
				t.Errorf("settled %d (%v), want %d", i, err, next)
			}
			next++
		})
		if err != nil {
			return err
		}
		if next != len(batch) {
			t.Fatalf("settled %d of %d", next, len(batch))
		}
	}
	return nil
}

// stored reads the stream and checks its chain: every message is a
// chained event at its sequence, linked to the chained message before it.
// It returns the idempotency keys in stream order (other writers' messages
// as "foreign").
func stored(t *testing.T, urls []string, stream string) []string {
	t.Helper()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// After a restart the stream answers once it has a leader again.
	var s jetstream.Stream
	var info *jetstream.StreamInfo
	for {
		if s, err = js.Stream(ctx, stream); err == nil {
			if info, err = s.Info(ctx); err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// After a restart the cluster elects its leaders again: a read that
	// fails is started over.
	for {
		keys, err := readChain(t, ctx, s, info.State.LastSeq)
		if err == nil {
			return keys
		}
		if ctx.Err() != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readChain reads messages 1 to last and checks their chain.
func readChain(t *testing.T, ctx context.Context, s jetstream.Stream, last uint64) ([]string, error) {
	t.Helper()
	var keys []string
	prev := chain.Genesis
	next := uint64(1)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for next <= last {
		// Never ask for more than is left: Fetch waits its whole
		// MaxWait for a batch it cannot fill.
		batch, err := cons.Fetch(int(min(500, last-next+1)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		for m := range batch.Messages() {
			md, _ := m.Metadata()
			if seq := md.Sequence.Stream; seq != next {
				t.Fatalf("read message %d, want %d", seq, next)
			}
			next++
			e, err := Parse(md.Sequence.Stream, m.Data())
			if err != nil {
				keys = append(keys, "foreign")
				continue
			}
			if e.PrevHash != prev {
				t.Errorf("message %d links to %s, want %s", md.Sequence.Stream, e.PrevHash, prev)
			}
			prev = e.Hash
			key, _ := keyOf(m.Data())
			keys = append(keys, key)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, err
		}
	}
	return keys, nil
}

// exact checks that keys are evs' keys, once each, in order.
func exact(t *testing.T, keys []string, evs []*envelope.Event) {
	t.Helper()
	var want []string
	for _, ev := range evs {
		want = append(want, ev.Key)
	}
	dup, seen := 0, map[string]bool{}
	for _, k := range keys {
		if seen[k] {
			dup++
		}
		seen[k] = true
	}
	if strings.Join(keys, "\n") != strings.Join(want, "\n") {
		missing := 0
		for _, k := range want {
			if !seen[k] {
				missing++
			}
		}
		t.Fatalf("stream holds %d messages (%d duplicates, %d missing), want the %d events once each in order", len(keys), dup, missing, len(want))
	}
}

// TestBuildIsTheSpinesEvent: a message is the GovernanceEvent the spine
// would store, hashed as the spine hashes it, and Parse accepts it only at
// its own sequence and intact.
func TestBuildIsTheSpinesEvent(t *testing.T) {
	ev := testEvent(7)
	m := Build(ev, Link{Seq: 41, Hash: chain.Genesis})
	e, err := Parse(42, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if e.EventID != 42 || e.Kind != "other" || e.Source != ev.Source || e.PrevHash != chain.Genesis || e.Hash != m.Hash {
		t.Fatalf("parsed %+v", e)
	}
	canon, err := chain.CanonicalEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := chain.Hash(e); h != m.Hash {
		t.Fatalf("chain.Hash %s, Build %s (canonical %s)", h, m.Hash, canon)
	}
	if _, err := Parse(43, m.Data); !errors.Is(err, ErrNotChained) {
		t.Fatalf("Parse at another sequence: %v", err)
	}
	tampered := strings.Replace(string(m.Data), `"id":7`, `"id":8`, 1)
	if _, err := Parse(42, []byte(tampered)); !errors.Is(err, ErrNotChained) {
		t.Fatalf("Parse of a tampered message: %v", err)
	}
	if again := Build(ev, Link{Seq: 41, Hash: chain.Genesis}); string(again.Data) != string(m.Data) {
		t.Fatal("Build is not deterministic")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(uint64(1), Build(testEvent(1), Link{Hash: chain.Genesis}).Data)
	f.Add(uint64(2), []byte(`{"event_id":2}`))
	f.Fuzz(func(t *testing.T, seq uint64, data []byte) {
		e, err := Parse(seq, data)
		if err != nil {
			return
		}
		if h, herr := chain.Hash(e); herr != nil || h != e.Hash || uint64(e.EventID) != seq {
			t.Fatalf("Parse accepted %q at %d", data, seq)
		}
	})
}

// TestExactlyOnceInOrder: into a new three-replica stream, every event
// once, in order, chained; a second client (an agent restarted) sending the
// same events again stores nothing twice.
func TestExactlyOnceInOrder(t *testing.T) {
	cl := natstest.Start(t, 3)
	c, _ := newClient(t, cl.URLs())
	ctx := context.Background()
	evs := events(0, 3000)
	if err := deliver(t, ctx, c, evs); err != nil {
		t.Fatal(err)
	}
	info, err := c.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := info.Config; cfg.Replicas != 3 || cfg.Storage != jetstream.FileStorage || !cfg.DenyDelete || !cfg.DenyPurge || cfg.Duplicates != DefaultDuplicates {
		t.Fatalf("stream made with %+v", cfg)
	}
	again, n := newClient(t, cl.URLs())
	if err := deliver(t, ctx, again, events(2000, 3500)); err != nil {
		t.Fatal(err)
	}
	if n.skipped != 1000 {
		t.Errorf("restarted client skipped %d events found in the stream, want 1000", n.skipped)
	}
	exact(t, stored(t, cl.URLs(), DefaultStream), events(0, 3500))
	if got := again.MarkFor("7301", "slot"); got != testEvent(3499).Pos {
		t.Errorf("MarkFor = %v", got)
	}
}

// TestServersStopped: the stream's leader stopped in the middle of
// windows, then one server gone for good, then every server down for a
// while (four seconds: twice the acknowledgement timeout, so publishes in
// flight time out and are sent again): delivery waits, resumes, and the
// stream holds every event once, in order.
func TestServersStopped(t *testing.T) {
	// Mostly waiting on servers: it runs beside the other parallel test
	// (after the serial ones).
	t.Parallel()
	cl := natstest.Start(t, 3)
	c, n := newClient(t, cl.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := deliver(t, ctx, c, events(0, 300)); err != nil {
		t.Fatal(err)
	}
	leader := cl.WaitStreamLeader(DefaultStream, 10*time.Second)
	done := make(chan error, 1)
	go func() { done <- deliver(t, ctx, c, events(300, 8000)) }()
	waitStored(t, cl.URLs(), 1500)
	stillDelivering(t, done)
	cl.Stop(leader)
	t.Logf("stopped the stream leader n%d", leader+1)
	time.Sleep(2 * time.Second)
	cl.Restart(leader)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	exact(t, stored(t, cl.URLs(), DefaultStream), events(0, 8000))

	// One server gone for good: the quorum of two goes on.
	gone := (cl.WaitStreamLeader(DefaultStream, 10*time.Second) + 1) % 3
	cl.Stop(gone)
	if err := deliver(t, ctx, c, events(8000, 8500)); err != nil {
		t.Fatal(err)
	}
	// Every server down for four seconds: delivery waits them out.
	go func() { done <- deliver(t, ctx, c, events(8500, 16000)) }()
	waitStored(t, cl.URLs(), 9500)
	stillDelivering(t, done)
	cl.StopAll()
	t.Log("stopped every server")
	time.Sleep(4 * time.Second)
	for i := range 3 {
		if i != gone {
			cl.Restart(i)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	exact(t, stored(t, cl.URLs(), DefaultStream), events(0, 16000))
	if n.retries == 0 {
		t.Error("no retry was counted across the outages")
	}
}

// stillDelivering fails the test when the delivery running in the
// background already ended: a stop would then not test an outage in the
// middle of windows.
func stillDelivering(t *testing.T, done chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("the delivery ended (%v) before the servers were stopped: deliver more events", err)
	default:
	}
}

// waitStored waits until the stream holds at least n messages.
func waitStored(t *testing.T, urls []string, n uint64) {
	t.Helper()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if s, err := js.Stream(context.Background(), DefaultStream); err == nil && s.CachedInfo().State.LastSeq >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the stream never reached %d messages", n)
}

// TestWeakStreamRefused: an existing stream that could lose or rewrite the
// trail is refused, naming each setting.
func TestWeakStreamRefused(t *testing.T) {
	cl := natstest.Start(t, 1)
	js := rawJetStream(t, cl.URLs()[0])
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultStream, Subjects: []string{DefaultSubject},
		Storage: jetstream.MemoryStorage, MaxAge: time.Hour, AllowRollup: true}); err != nil {
		t.Fatal(err)
	}
	c, _ := newClient(t, cl.URLs())
	err := c.Publish(ctx, testEvent(1))
	var se *StreamError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a StreamError", err)
	}
	for _, setting := range []string{"storage", "deny_delete", "deny_purge", "allow_rollup_hdrs", "max_age"} {
		if !strings.Contains(err.Error(), setting+" is") {
			t.Errorf("the refusal does not name %s: %v", setting, err)
		}
	}
	if info, _ := js.Stream(ctx, DefaultStream); info.CachedInfo().State.Msgs != 0 {
		t.Error("a message was written to the weak stream")
	}
}

// TestTooFewServersForReplicas: a stream of more replicas than servers
// online is refused with the fix, and Health says so (the agent then
// waits, events in the slot).
func TestTooFewServersForReplicas(t *testing.T) {
	cl := natstest.Start(t, 3)
	c, _ := newClient(t, cl.URLs(), func(cfg *Config) { cfg.Replicas = 5 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "lower --nats-replicas") {
		t.Fatalf("got %v, want the refusal naming --nats-replicas", err)
	}
}

// TestTooLargeRefused: an event over the servers' max_payload is refused
// before it is sent, with the limit to raise; nothing after it is settled.
func TestTooLargeRefused(t *testing.T) {
	cl := natstest.Start(t, 1, func(_ int, o *server.Options) { o.MaxPayload = 64 << 10 })
	c, _ := newClient(t, cl.URLs())
	big := testEvent(1)
	big.New = []byte(`{"id":1,"v":"` + strings.Repeat("x", 100<<10) + `"}`)
	big.Finish()
	settled := 0
	err := c.PublishBatch(context.Background(), []*envelope.Event{testEvent(0), big, testEvent(2)}, func(int, error) { settled++ })
	var se *SizeError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("got %v, want a SizeError naming max_payload", err)
	}
	if settled != 1 {
		t.Fatalf("settled %d events, want only the one before the large one", settled)
	}
}

// TestOtherWriters: a message another writer put on the subject, and one
// that took an event's Nats-Msg-Id first, neither hide nor reorder the
// agent's events; both are reported.
func TestOtherWriters(t *testing.T) {
	cl := natstest.Start(t, 3)
	c, n := newClient(t, cl.URLs())
	ctx := context.Background()
	if err := deliver(t, ctx, c, events(0, 10)); err != nil {
		t.Fatal(err)
	}
	js := rawJetStream(t, cl.URLs()[0])
	if _, err := js.Publish(ctx, DefaultSubject, []byte(`{"not":"ours"}`)); err != nil {
		t.Fatal(err)
	}
	// The forger knows the next event's key and takes it first.
	forged := testEvent(12)
	forged.New = []byte(`{"id":12,"v":"mallory"}`)
	forged.Finish()
	// It links its message into the chain, as anyone reading the stream can.
	if _, err := js.Publish(ctx, DefaultSubject, Build(forged, Link{Seq: 11, Hash: c.head.Hash}).Data, jetstream.WithMsgID(forged.Key)); err != nil {
		t.Fatal(err)
	}
	if err := deliver(t, ctx, c, events(10, 20)); err != nil {
		t.Fatal(err)
	}
	keys := stored(t, cl.URLs(), DefaultStream)
	var ours []string
	for _, k := range keys {
		if k != "foreign" {
			ours = append(ours, k)
		}
	}
	// The forged message is chained; the real event 12 comes after 10 and
	// 11, naming it.
	if len(ours) != 21 || ours[10] != testEvent(12).Key || ours[13] != testEvent(12).Key || keys[10] != "foreign" {
		t.Fatalf("stream keys %v", keys)
	}
	if n.forged == 0 {
		t.Error("the forgery was not reported")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestForgedKeyWhileDown: while the agent is down, another writer stores a
// message under the key the next change will get (issue 20's pre-emption).
// The restarted agent's read-back finds the key with other content: the
// real event is delivered, naming the forgery, never counted as delivered.
func TestForgedKeyWhileDown(t *testing.T) {
	cl := natstest.Start(t, 1)
	c, _ := newClient(t, cl.URLs())
	ctx := context.Background()
	if err := deliver(t, ctx, c, events(0, 5)); err != nil {
		t.Fatal(err)
	}
	head := c.head
	c.Close()
	forged := testEvent(5)
	forged.New = []byte(`{"id":5,"v":"harmless"}`)
	forged.Finish()
	js := rawJetStream(t, cl.URLs()[0])
	// Another message ID: the forger only needs the key inside the event.
	if _, err := js.Publish(ctx, DefaultSubject, Build(forged, head).Data, jetstream.WithMsgID("other")); err != nil {
		t.Fatal(err)
	}
	again, n := newClient(t, cl.URLs())
	if err := deliver(t, ctx, again, events(0, 7)); err != nil {
		t.Fatal(err)
	}
	if n.skipped != 5 || n.forged == 0 {
		t.Fatalf("skipped %d, forgeries reported %d: want the 5 delivered events skipped and the forgery reported", n.skipped, n.forged)
	}
	keys := stored(t, cl.URLs(), DefaultStream)
	if len(keys) != 8 || keys[5] != testEvent(5).Key || keys[6] != testEvent(5).Key || keys[7] != testEvent(6).Key {
		t.Fatalf("stream keys %v: want the forgery, then the real event 5 and event 6", keys)
	}
}

// TestStreamLostItsHistory: a stream deleted (and made again) under a
// running client lost the trail it held: PublishBatch stops with a
// HistoryLostError, which the agent turns into a capture gap.
func TestStreamLostItsHistory(t *testing.T) {
	cl := natstest.Start(t, 1)
	c, _ := newClient(t, cl.URLs())
	ctx := context.Background()
	if err := deliver(t, ctx, c, events(0, 10)); err != nil {
		t.Fatal(err)
	}
	js := rawJetStream(t, cl.URLs()[0])
	if err := js.DeleteStream(ctx, DefaultStream); err != nil {
		t.Fatal(err)
	}
	err := c.Publish(ctx, testEvent(10))
	if !publish.IsHistoryLost(err) {
		t.Fatalf("after the stream was deleted: %v, want a HistoryLostError", err)
	}
	again, _ := newClient(t, cl.URLs())
	if err := again.Publish(ctx, testEvent(10)); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, DefaultStream); err != nil {
		t.Fatal(err)
	}
	if err := again.Publish(ctx, testEvent(11)); !publish.IsHistoryLost(err) {
		t.Fatalf("after the stream was deleted again: %v, want a HistoryLostError", err)
	}
}

// rawJetStream is a plain JetStream client of another writer (or of a
// test's own checks), closed at the end of the test.
func rawJetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestRefusedIsAnOutage: refused credentials and a missing publish
// permission are outages: delivery waits (reported down, nothing stored,
// no event refused for good) and says what to grant; the right user then
// delivers each event once.
func TestRefusedIsAnOutage(t *testing.T) {
	// Mostly waiting on servers: it runs beside the other parallel test
	// (after the serial ones).
	t.Parallel()
	allow := func(subjects ...string) *server.Permissions {
		return &server.Permissions{Publish: &server.SubjectPermission{Allow: subjects}}
	}
	cl := natstest.Start(t, 1, func(_ int, o *server.Options) {
		o.Users = []*server.User{
			{Username: "agent", Password: "right", Permissions: allow("$JS.API.>", DefaultSubject)},
			{Username: "reader", Password: "right", Permissions: allow("$JS.API.>")},
		}
	})
	dir := t.TempDir()
	secret := func(name, value string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	right, wrong := secret("right", "right"), secret("wrong", "wrong")
	for _, tc := range []struct {
		name, user, password, want string
	}{
		{"wrong password", "agent", wrong, "authorization"},
		{"no publish permission", "reader", right, "grant its user publish permission on " + DefaultSubject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncLog
			var downs int
			var last bool
			c, _ := newClient(t, cl.URLs(), func(cfg *Config) {
				cfg.User, cfg.PasswordFile = tc.user, tc.password
				// A publish the server drops for want of permission is
				// known only when its acknowledgement times out.
				cfg.AckTimeout = 500 * time.Millisecond
				cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				cfg.Hooks.SpineUp = func(up bool) {
					if last = up; !up {
						downs++
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			err := c.Publish(ctx, testEvent(0))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want delivery to wait until the context ends", err)
			}
			if downs == 0 || last {
				t.Errorf("reported down %d times, last up=%v: want the destination reported down", downs, last)
			}
			if !strings.Contains(strings.ToLower(logs.String()), strings.ToLower(tc.want)) {
				t.Errorf("the log does not say %q:\n%.3000s", tc.want, logs.String())
			}
		})
	}
	good, _ := newClient(t, cl.URLs(), func(cfg *Config) { cfg.User, cfg.PasswordFile = "agent", right })
	if err := deliver(t, context.Background(), good, events(0, 3)); err != nil {
		t.Fatal(err)
	}
	info, err := good.stream.Info(context.Background())
	if err != nil || info.State.Msgs != 3 {
		t.Fatalf("the stream holds %v messages (%v), want the 3 events once", info, err)
	}
}

// syncLog is a log sink safe for the client's goroutines.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
