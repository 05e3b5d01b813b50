package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

const (
	testSlot = "pgaudit_cdc"
	testPub  = "pgaudit_cdc"
)

// harness is one database, one spine double and an agent that can be
// started and stopped.
type harness struct {
	t     *testing.T
	dsn   string
	conn  *pgx.Conn
	spine *spinetest.Server
	stop  func()
	done  chan error
	// obs, when set (observe), receives the agents' metrics, readiness and
	// log.
	obs *observer
	// key signs the trail of every agent the harness starts.
	key *trail.Key
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, dsn: pgtest.DSN(t), spine: spinetest.Start(t)}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	h.conn = conn
	t.Cleanup(h.stopAgent)
	return h
}

func (h *harness) exec(sql string, args ...any) {
	h.t.Helper()
	if _, err := h.conn.Exec(context.Background(), sql, args...); err != nil {
		h.t.Fatalf("exec %q: %v", sql, err)
	}
}

func (h *harness) watch(table, kind, source string) string {
	h.t.Helper()
	tn, err := watches.ParseTableName(table)
	if err != nil {
		h.t.Fatalf("parsing %q: %v", table, err)
	}
	name, err := watches.NewRegistry(h.conn, testPub, testSlot).Watch(context.Background(), tn, kind, source)
	if err != nil {
		h.t.Fatalf("watch %s: %v", table, err)
	}
	return name
}

func (h *harness) unwatch(table string) bool {
	h.t.Helper()
	tn, err := watches.ParseTableName(table)
	if err != nil {
		h.t.Fatalf("parsing %q: %v", table, err)
	}
	removed, err := watches.NewRegistry(h.conn, testPub, testSlot).Unwatch(context.Background(), tn)
	if err != nil {
		h.t.Fatalf("unwatch %s: %v", table, err)
	}
	return removed
}

// housekeepingInterval is Config.HousekeepingInterval for the tests that
// wait for maintenance rounds (the default is 15 s), and housekeepingWait
// how long they wait for one that changes something.
const (
	housekeepingInterval = time.Second
	housekeepingWait     = raceSlowdown * 10 * time.Second
)

// startAgent runs an agent against the spine double until stopAgent.
func (h *harness) startAgent() {
	h.t.Helper()
	h.startAgentWith(nil)
}

// startAgentWith is startAgent with a change to the agent's configuration.
func (h *harness) startAgentWith(tune func(*agent.Config)) {
	h.t.Helper()
	if h.stop != nil {
		h.t.Fatalf("BUG: agent already running")
	}
	var out io.Writer = testWriter{h.t}
	var hooks publish.Hooks
	if h.obs != nil {
		out = io.MultiWriter(out, h.obs.logs)
		hooks = h.obs.m.PublishHooks(h.obs.ready)
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	client, err := publish.NewClient(publish.ClientConfig{
		URL: h.spine.URL(), Timeout: raceSlowdown * 2 * time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: log,
		Hooks: hooks,
	})
	if err != nil {
		h.t.Fatalf("client: %v", err)
	}
	if h.key == nil {
		if h.key, err = trail.GenerateKey(); err != nil {
			h.t.Fatalf("key: %v", err)
		}
	}
	cfg := agent.Config{
		DatabaseURL: h.dsn, Slot: testSlot, Publication: testPub,
		Sink: client, Spine: client, StatusInterval: 100 * time.Millisecond,
		ShutdownGrace: 500 * time.Millisecond, Logger: log, Signer: h.key,
	}
	if h.obs != nil {
		cfg.Metrics, cfg.Ready = h.obs.m, h.obs.ready
	}
	if tune != nil {
		tune(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		h.t.Fatalf("agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.done = make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
	h.stop = cancel
}

// waitExit waits for the agent to stop by itself and returns Run's error.
func (h *harness) waitExit(within time.Duration) error {
	h.t.Helper()
	if h.stop == nil {
		h.t.Fatalf("BUG: no agent running")
	}
	select {
	case err := <-h.done:
		h.stop()
		h.stop = nil
		return err
	case <-time.After(within):
		h.t.Fatalf("the agent did not stop by itself within %s", within)
		return nil
	}
}

func (h *harness) stopAgent() {
	if h.stop == nil {
		return
	}
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("agent.Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Errorf("agent did not stop within 30s")
	}
	h.stop = nil
}

// dataEvents returns the spine's events except the registry's own
// (source pgaudit-cdc), which TestSelfAudit checks.
func (h *harness) dataEvents() []spinetest.Event {
	var out []spinetest.Event
	for _, e := range h.spine.Events() {
		if e.Source != "pgaudit-cdc" {
			out = append(out, e)
		}
	}
	return out
}

// waitEvents waits until the spine holds n data events and returns them.
func (h *harness) waitEvents(n int, within time.Duration) []spinetest.Event {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		evs := h.dataEvents()
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("got %d events within %s, want %d", len(evs), within, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settle waits a little and checks that no event beyond n arrived.
func (h *harness) expectExactly(n int, quiet time.Duration) []spinetest.Event {
	h.t.Helper()
	h.waitEvents(n, raceSlowdown*30*time.Second)
	time.Sleep(quiet)
	evs := h.dataEvents()
	if len(evs) != n {
		h.t.Fatalf("got %d events, want exactly %d:\n%s", len(evs), n, dump(evs))
	}
	if ok, at, reason := h.spine.Verify(); !ok {
		h.t.Fatalf("spine chain invalid at %d: %s", at, reason)
	}
	return evs
}

// sourceOps lists each event as "source operation", in chain order.
func sourceOps(t *testing.T, evs []spinetest.Event) []string {
	t.Helper()
	var ops []string
	for _, e := range withoutTrail(evs) {
		ops = append(ops, fmt.Sprintf("%s %v", e.Source, field(t, e, "operation")))
	}
	return ops
}

// withoutTrail leaves out the trail's own events (KEY, SEAL).
func withoutTrail(evs []spinetest.Event) []spinetest.Event {
	var out []spinetest.Event
	for _, e := range evs {
		if meta, _ := e.Payload["metadata"].(map[string]any); !trail.IsTrailKey(fmt.Sprint(meta["idempotency_key"])) {
			out = append(out, e)
		}
	}
	return out
}

func dump(evs []spinetest.Event) string {
	var b strings.Builder
	for _, e := range evs {
		p, _ := json.Marshal(e.Payload)
		fmt.Fprintf(&b, "  #%d %s %s %s\n", e.EventID, e.Kind, e.Source, publish.Truncate(string(p), 300))
	}
	return b.String()
}

// payload returns the event's payload re-encoded, for comparisons.
func field(t *testing.T, e spinetest.Event, path ...string) any {
	t.Helper()
	var v any = e.Payload
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return string(b)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newRegistry(h *harness) *watches.Registry {
	return watches.NewRegistry(h.conn, testPub, testSlot)
}

func mustName(t *testing.T, s string) watches.TableName {
	t.Helper()
	tn, err := watches.ParseTableName(s)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
