package publish

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// The tests of this file are those of answers_test.go on the pipelined path
// (PublishBatch with a window, the agent's default): a 201 counts only with
// the stored event in its body, and a refusal of the client as a whole is
// retried, never turned into a rejection, and never followed elsewhere.

// cutShort answers 201 with a Content-Length of 100000 and 14 bytes of body
// without passing the request on (nothing is appended), then closes the
// connection at once (quit nil) or when quit is closed. (Waiting for the
// client to leave would not do: with pipelined requests buffered, the server
// does not notice a client that closed the connection.)
func cutShort(quit <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"event_id":14`)
		w.(http.Flusher).Flush()
		if quit != nil {
			<-quit
		}
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	}
}

// nthPost serves spine, except that the POST /events numbered at (from 0)
// gets answer.
func nthPost(t *testing.T, spine *spinetest.Server, at int64, answer http.HandlerFunc) string {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/events" && n.Add(1)-1 == at {
			answer(w, r)
			return
		}
		spine.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestPipelinedUnconfirmed201IsNotAccepted: in the middle of a full window,
// a 201 whose body is truncated (the connection closes before the promised
// Content-Length) or stalls until the timeout is an uncertain outcome, not
// an acceptance: the client reads back and sends again what is missing, so
// every event is in the chain exactly once, whether the 201 came after the
// append (the double's FaultStallBody) or from something that never passed
// the request on (the lost row 432).
func TestPipelinedUnconfirmed201IsNotAccepted(t *testing.T) {
	tests := []struct {
		name    string
		front   func(t *testing.T, spine *spinetest.Server) string
		timeout time.Duration
	}{
		{"body truncated after the append", func(t *testing.T, spine *spinetest.Server) string {
			spine.SetStall(0)
			spine.FailNext(5, spinetest.FaultNone)
			spine.FailNext(1, spinetest.FaultStallBody)
			return spine.URL()
		}, time.Second},
		{"body stalled until the timeout, after the append", func(t *testing.T, spine *spinetest.Server) string {
			spine.SetStall(time.Minute)
			spine.SetStallBytes(100)
			spine.FailNext(5, spinetest.FaultNone)
			spine.FailNext(1, spinetest.FaultStallBody)
			return spine.URL()
		}, 300 * time.Millisecond},
		{"body truncated, not appended", func(t *testing.T, spine *spinetest.Server) string {
			return nthPost(t, spine, 5, cutShort(nil))
		}, time.Second},
		{"body stalled until the timeout, not appended", func(t *testing.T, spine *spinetest.Server) string {
			quit := make(chan struct{})
			url := nthPost(t, spine, 5, cutShort(quit))
			t.Cleanup(func() { close(quit) }) // before the server closes
			return url
		}, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spine := spinetest.Start(t)
			url := tt.front(t, spine)
			c, h, _ := newHookedClient(t, url, func(c *ClientConfig) { c.MaxInFlight = 16; c.Timeout = tt.timeout })
			if c.window() != 16 {
				t.Fatalf("window %d: the test needs the pipelined path", c.window())
			}
			evs := batchOf(40)
			for i, err := range publishBatch(t, c, evs) {
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
			}
			dup, missing, disorder, late := chainReport(t, spine, evs, nil)
			t.Logf("%d events, dup %d, missing %d, out of order %d, late %d", len(spine.Events()), dup, missing, disorder, late)
			if dup != 0 || missing != 0 || disorder != 0 {
				t.Fatalf("dup %d, missing %d, out of order (unmarked) %d", dup, missing, disorder)
			}
			if ok, at, why := spine.Verify(); !ok {
				t.Fatalf("chain invalid at %d: %s", at, why)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			if !slices.Contains(h.outcomes, "201_unconfirmed") || !slices.Contains(h.reasons, "unconfirmed") {
				t.Errorf("hooks: got outcomes %v reasons %v, want a 201_unconfirmed outcome and an unconfirmed retry", h.outcomes, h.reasons)
			}
			if !h.wentDown() || !h.lastUp() {
				t.Errorf("SpineUp: got %v, want a false, then true at the end", h.ups)
			}
		})
	}
}

// TestPipelinedSpineRefusalsAreRetried: 401, 403, 404, 405 and 302 answered
// to requests in a full window are waited out and reported as the spine
// being down; no event is rejected (none would become a dead letter), every
// event lands exactly once, and a redirect is never followed: its target
// never sees a request, nor the token.
func TestPipelinedSpineRefusalsAreRetried(t *testing.T) {
	tests := []struct {
		fault  spinetest.Fault
		reason string
		fix    string
	}{
		{spinetest.Fault401, "refused_auth", "check AUDIT_STREAM_TOKEN"},
		{spinetest.Fault403, "refused_auth", "check AUDIT_STREAM_TOKEN"},
		{spinetest.Fault404, "refused_spine", "check AUDIT_STREAM_URL"},
		{spinetest.Fault405, "refused_spine", "check AUDIT_STREAM_URL"},
		{spinetest.Fault302, "refused_redirect", "check AUDIT_STREAM_URL: it redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.fault.String(), func(t *testing.T) {
			var visits atomic.Int64
			var sawToken atomic.Bool
			other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				visits.Add(1)
				if r.Header.Get("Authorization") != "" {
					sawToken.Store(true)
				}
				w.WriteHeader(http.StatusCreated)
			}))
			t.Cleanup(other.Close)
			spine := spinetest.Start(t)
			spine.SetRedirect(other.URL + "/events?state=s3cr3t")
			// From the sixth request on, the next 40 are refused: the rest
			// of the first window and whole windows after it. The last
			// refusal falls inside a window whose later requests land, so
			// some events are sent again after them, marked late.
			spine.FailNext(5, spinetest.FaultNone)
			spine.FailNext(40, tt.fault)
			c, h, logs := newHookedClient(t, spine.URL(), func(c *ClientConfig) { c.MaxInFlight = 16; c.Token = "tok-3n7" })
			if c.window() != 16 {
				t.Fatalf("window %d: the test needs the pipelined path", c.window())
			}
			evs := batchOf(40)
			for i, err := range publishBatch(t, c, evs) {
				if err != nil {
					t.Fatalf("event %d: got %v, want delivery once the refusals stop (never a rejection)", i, err)
				}
			}
			if n := spine.Faults()[tt.fault]; n != 40 {
				t.Fatalf("%d refusals served, want all 40", n)
			}
			dup, missing, disorder, late := chainReport(t, spine, evs, nil)
			t.Logf("%d events, dup %d, missing %d, out of order %d, late %d", len(spine.Events()), dup, missing, disorder, late)
			if dup != 0 || missing != 0 || disorder != 0 {
				t.Fatalf("dup %d, missing %d, out of order (unmarked) %d", dup, missing, disorder)
			}
			if ok, at, why := spine.Verify(); !ok {
				t.Fatalf("chain invalid at %d: %s", at, why)
			}
			if n := visits.Load(); n != 0 || sawToken.Load() {
				t.Fatalf("the redirect's target got %d requests (token seen: %v), want none", n, sawToken.Load())
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			if countOf(h.reasons, tt.reason) == 0 || slices.ContainsFunc(h.reasons, func(r string) bool { return r != tt.reason && r != "read_back" }) {
				t.Errorf("retry reasons: got %v, want %s", h.reasons, tt.reason)
			}
			if !h.wentDown() || !h.lastUp() {
				t.Errorf("SpineUp: got %v, want false while refused, true at the end", h.ups)
			}
			log := logs.String()
			if !strings.Contains(log, tt.fix) || !strings.Contains(log, "level=ERROR") {
				t.Errorf("log: got\n%s\nwant an error saying %q", log, tt.fix)
			}
			if strings.Contains(log, "tok-3n7") || strings.Contains(log, "s3cr3t") {
				t.Errorf("log: the token or the redirect's query leaked:\n%s", log)
			}
		})
	}
}
