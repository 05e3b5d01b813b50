package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// TestSpineRefusalEndToEnd runs the agent against something standing in
// front of the spine that, for a while, answers in a way that does not
// accept the event: a 401 or a 302 to POST /events, a 201 whose body is cut
// short (nothing appended), or a 401 to the read-back (GET /events). While
// it lasts, /readyz says not ready because of the spine (replication still
// streams), pgaudit_cdc_spine_up is 0, the retries are counted under the
// refusal's reason, nothing becomes a dead letter and the slot's confirmed
// LSN does not pass the refused change. When the spine answers again,
// every change arrives exactly once, in commit order, and the token was
// never sent anywhere but the spine.
func TestSpineRefusalEndToEnd(t *testing.T) {
	const token = "tok-e2e-7f3"
	tests := []struct {
		name   string
		get    bool // refuse the read-back (GET /events) rather than POST /events
		answer func(w http.ResponseWriter, r *http.Request, elsewhere string)
		reason string // pgaudit_cdc_publish_retries_total{reason}
		log    string // in an ERROR line, when set
	}{
		{"POST 401", false, func(w http.ResponseWriter, _ *http.Request, _ string) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"detail":"Not authenticated"}`)
		}, "refused_auth", "check AUDIT_STREAM_TOKEN"},
		{"POST 302", false, func(w http.ResponseWriter, _ *http.Request, elsewhere string) {
			w.Header().Set("Location", elsewhere+"/events")
			w.WriteHeader(http.StatusFound)
		}, "refused_redirect", "it redirects"},
		{"POST 201 with a truncated body", false, func(w http.ResponseWriter, _ *http.Request, _ string) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "100000")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"event_id":1,"ti`)
			w.(http.Flusher).Flush()
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
		}, "unconfirmed", ""},
		{"read-back 401", true, func(w http.ResponseWriter, _ *http.Request, _ string) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"detail":"Not authenticated"}`)
		}, "refused_auth", "GET /events with HTTP 401 Unauthorized: check AUDIT_STREAM_TOKEN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			obs := h.observe()

			// Where a redirect points: it must never be visited.
			var visits atomic.Int64
			var leaked atomic.Bool
			elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				visits.Add(1)
				if r.Header.Get("Authorization") != "" {
					leaked.Store(true)
				}
				w.WriteHeader(http.StatusCreated)
			}))
			t.Cleanup(elsewhere.Close)
			// The front: the spine double, except while refusing.
			var refusing atomic.Bool
			var refused, authorized atomic.Int64
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/events" && strings.Contains(r.Header.Get("Authorization"), token) {
					authorized.Add(1)
				}
				want := http.MethodPost
				if tt.get {
					want = http.MethodGet
				}
				if refusing.Load() && r.URL.Path == "/events" && r.Method == want {
					_, _ = io.Copy(io.Discard, r.Body)
					refused.Add(1)
					tt.answer(w, r, elsewhere.URL)
					return
				}
				h.spine.ServeHTTP(w, r)
			}))
			t.Cleanup(front.Close)

			h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
			h.exec(`CREATE TABLE t2 (id int PRIMARY KEY, v text)`)
			h.watch("t1", "other", "s")
			h.watch("t2", "other", "s2") // its source is first read back when its first change comes
			h.startAgentWith(func(c *agent.Config) {
				client, err := publish.NewClient(publish.ClientConfig{
					URL: front.URL, Token: token, Timeout: 2 * time.Second,
					MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
					Logger: c.Logger, Hooks: obs.m.PublishHooks(obs.ready),
				})
				if err != nil {
					t.Fatalf("client: %v", err)
				}
				c.Sink, c.Spine = client, client
			})
			h.insertRange(1, 3)
			h.waitEvents(3, 30*time.Second)
			waitReady(t, obs, http.StatusOK, "ready")
			obs.expectMetric(t, 1, "pgaudit_cdc_spine_up")

			refusing.Store(true)
			before := currentLSN(t, h)
			if tt.get {
				h.exec(`INSERT INTO t2 VALUES (1, 'new source')`)
			} else {
				h.insertRange(4, 4)
			}
			h.insertRange(5, 5)
			h.exec(`CREATE TABLE noise AS SELECT generate_series(1, 1000) g`) // the server's WAL moves on

			// Not ready because of the spine, while replication streams.
			waitReady(t, obs, http.StatusServiceUnavailable, "spine unreachable or refusing")
			obs.expectMetric(t, 0, "pgaudit_cdc_spine_up")
			time.Sleep(1500 * time.Millisecond) // many status intervals and retries
			if code, body := obs.readyz(t); code != http.StatusServiceUnavailable || !strings.Contains(body, "spine") {
				t.Fatalf("/readyz while refused: %d %s", code, body)
			}
			obs.expectMetric(t, 0, "pgaudit_cdc_spine_up")
			if n, _ := obs.metric(t, "pgaudit_cdc_publish_retries_total", "reason", tt.reason); n < 2 {
				t.Fatalf("pgaudit_cdc_publish_retries_total{reason=%q} = %v, want the refusals retried", tt.reason, n)
			}
			if refused.Load() < 2 {
				t.Fatalf("the front refused %d requests, want several", refused.Load())
			}
			if tt.log != "" {
				obs.expectLog(t, -1, "level=ERROR", tt.log)
			}
			if confirmed := slotConfirmed(t, h); confirmed > before {
				t.Fatalf("confirmed_flush_lsn %s passed %s while the spine had not accepted the change after it", confirmed, before)
			}
			if n := len(h.dataEvents()); n != 3 {
				t.Fatalf("%d events in the chain while refused, want the 3 from before", n)
			}
			expectNoDeadLetters(t, h, obs)

			refusing.Store(false)
			evs := h.expectExactly(5, 500*time.Millisecond)
			got := make([]string, len(evs))
			for i, e := range evs {
				got[i] = fmt.Sprintf("%v:%v", field(t, e, "table"), field(t, e, "new", "id"))
				if field(t, e, "metadata", "late") != nil {
					t.Errorf("event %s is marked late", got[i])
				}
			}
			want := "[public.t1:1 public.t1:2 public.t1:3 public.t1:4 public.t1:5]"
			if tt.get {
				want = "[public.t1:1 public.t1:2 public.t1:3 public.t2:1 public.t1:5]"
			}
			if fmt.Sprint(got) != want {
				t.Fatalf("chain %v, want %s: each change once, in commit order", got, want)
			}
			waitReady(t, obs, http.StatusOK, "ready")
			obs.expectMetric(t, 1, "pgaudit_cdc_spine_up")
			expectNoDeadLetters(t, h, obs)
			deadline := time.Now().Add(10 * time.Second)
			for slotConfirmed(t, h) <= before {
				if time.Now().After(deadline) {
					t.Fatalf("confirmed_flush_lsn stayed at %s after the spine accepted everything", slotConfirmed(t, h))
				}
				time.Sleep(50 * time.Millisecond)
			}
			if n := visits.Load(); n != 0 || leaked.Load() {
				t.Fatalf("the redirect's target got %d requests (token: %v), want none", n, leaked.Load())
			}
			if authorized.Load() == 0 {
				t.Fatalf("the spine never got the token: the test does not check what it means to")
			}
			if strings.Contains(obs.logs.String(), token) {
				t.Fatalf("the token is in the log")
			}
		})
	}
}

// waitReady waits until /readyz answers code with a body containing want.
func waitReady(t *testing.T, obs *observer, code int, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, body := obs.readyz(t)
		if c == code && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: got %d %s, want %d with %q", c, strings.TrimSpace(body), code, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func currentLSN(t *testing.T, h *harness) pgoutput.LSN {
	t.Helper()
	var s string
	if err := h.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := pgoutput.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// expectNoDeadLetters checks the dead_letters table and the metric.
func expectNoDeadLetters(t *testing.T, h *harness, obs *observer) {
	t.Helper()
	var n int
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pgaudit_cdc.dead_letters`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d dead letters, want none: a refusal of the client is never the event's fault", n)
	}
	for _, table := range []string{"public.t1", "public.t2"} {
		obs.expectMetric(t, 0, "pgaudit_cdc_dead_letters_total", "table", table)
	}
}
