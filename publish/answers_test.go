package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// The tests of this file check how Client judges the spine's answers: a 201
// counts only with the stored event in its body, a refusal of the client as
// a whole is retried and never becomes a dead letter, and only 400, 413 and
// 422 reject an event.

// hookLog records what a client reports through its Hooks.
type hookLog struct {
	mu       sync.Mutex
	outcomes []string
	reasons  []string
	ups      []bool
	skipped  int
}

func (h *hookLog) hooks() Hooks {
	return Hooks{
		Post: func(outcome string, _ time.Duration) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.outcomes = append(h.outcomes, outcome)
		},
		Retry: func(reason string, _ time.Duration) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.reasons = append(h.reasons, reason)
		},
		Skipped: func(*envelope.Event) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.skipped++
		},
		SpineUp: func(up bool) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.ups = append(h.ups, up)
		},
	}
}

// wentDown reports whether SpineUp(false) was called, and lastUp the last
// value reported.
func (h *hookLog) wentDown() bool { return slices.Contains(h.ups, false) }
func (h *hookLog) lastUp() bool   { return len(h.ups) > 0 && h.ups[len(h.ups)-1] }

// newHookedClient is newTestClient with hooks recorded, logs kept, and cfg
// adjusted by mod (may be nil).
func newHookedClient(t *testing.T, url string, mod func(*ClientConfig)) (*Client, *hookLog, *bytes.Buffer) {
	t.Helper()
	h := &hookLog{}
	var logs bytes.Buffer
	cfg := ClientConfig{URL: url, Timeout: time.Second, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Hooks: h.hooks(), Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity("7301", "slot")
	return c, h, &logs
}

// standIn serves spine behind something that answers the first n
// POST /events itself, with answer; the rest reach the spine.
func standIn(t *testing.T, spine *spinetest.Server, n int, answer http.HandlerFunc) string {
	t.Helper()
	var left atomic.Int64
	left.Store(int64(n))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/events" && left.Add(-1) >= 0 {
			answer(w, r)
			return
		}
		spine.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// status answers code with body, without passing the request on.
func status(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// afterAppend passes the request to spine (the event is appended), then
// answers 201 with the stored event rewritten by edit.
func afterAppend(spine *spinetest.Server, edit func(t map[string]any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		spine.ServeHTTP(rec, r)
		var stored map[string]any
		dec := json.NewDecoder(rec.Body)
		dec.UseNumber()
		if err := dec.Decode(&stored); err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		edit(stored)
		b, _ := json.Marshal(stored)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b)
	}
}

func setKey(key string) func(map[string]any) {
	return func(e map[string]any) {
		e["payload"].(map[string]any)["metadata"].(map[string]any)["idempotency_key"] = key
	}
}

// chainKeys returns the idempotency keys in the chain, in order.
func chainKeys(spine *spinetest.Server) []string { return keys(spine.Events()) }

func TestUnconfirmed201IsCheckedBeforeResending(t *testing.T) {
	ev := testEvent("s", 0x500, 1)
	tests := []struct {
		name string
		// front returns the URL the client talks to.
		front func(t *testing.T, spine *spinetest.Server) string
		// mod adjusts the client's configuration.
		mod func(*ClientConfig)
	}{
		{"html, not appended", func(t *testing.T, spine *spinetest.Server) string {
			spine.FailNext(2, spinetest.Fault201HTML)
			return spine.URL()
		}, nil},
		{"html after the append", func(t *testing.T, spine *spinetest.Server) string {
			spine.FailNext(1, spinetest.Fault201HTMLAfter)
			return spine.URL()
		}, nil},
		{"body truncated after the append", func(t *testing.T, spine *spinetest.Server) string {
			spine.SetStall(0)
			spine.FailNext(1, spinetest.FaultStallBody)
			return spine.URL()
		}, nil},
		{"body stalled until the timeout, after the append", func(t *testing.T, spine *spinetest.Server) string {
			spine.SetStall(time.Minute)
			spine.SetStallBytes(100)
			spine.FailNext(1, spinetest.FaultStallBody)
			return spine.URL()
		}, func(c *ClientConfig) { c.Timeout = 200 * time.Millisecond }},
		{"empty body, not appended", func(t *testing.T, spine *spinetest.Server) string {
			return standIn(t, spine, 1, status(http.StatusCreated, ""))
		}, nil},
		{"json of another event, not appended", func(t *testing.T, spine *spinetest.Server) string {
			other := testEvent("s", 0x400, 9)
			echo := `{"event_id":7,"timestamp":"2026-11-22T10:00:00+00:00","kind":"other","source":"s","payload":{"metadata":{"idempotency_key":"` +
				other.Key + `"}},"prev_hash":"` + strings.Repeat("0", 64) + `","hash":"` + strings.Repeat("1", 64) + `"}`
			return standIn(t, spine, 1, status(http.StatusCreated, echo))
		}, nil},
		{"another key after the append", func(t *testing.T, spine *spinetest.Server) string {
			return standIn(t, spine, 1, afterAppend(spine, setKey("pgaudit-cdc:7301:slot:0000000000000001:1")))
		}, nil},
		{"no event_id after the append", func(t *testing.T, spine *spinetest.Server) string {
			return standIn(t, spine, 1, afterAppend(spine, func(e map[string]any) { delete(e, "event_id") }))
		}, nil},
		{"no hash after the append", func(t *testing.T, spine *spinetest.Server) string {
			return standIn(t, spine, 1, afterAppend(spine, func(e map[string]any) { delete(e, "hash") }))
		}, nil},
		{"upper-case hash after the append", func(t *testing.T, spine *spinetest.Server) string {
			return standIn(t, spine, 1, afterAppend(spine, func(e map[string]any) { e["hash"] = strings.ToUpper(e["hash"].(string)) }))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spine := spinetest.Start(t)
			c, h, _ := newHookedClient(t, tt.front(t, spine), tt.mod)
			if err := c.Publish(context.Background(), ev); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			if got, want := chainKeys(spine), []string{ev.Key}; !reflect.DeepEqual(got, want) {
				t.Fatalf("chain: got %v, want exactly %v", got, want)
			}
			if !slices.Contains(h.outcomes, "201_unconfirmed") || !slices.Contains(h.reasons, "unconfirmed") {
				t.Errorf("hooks: got outcomes %v reasons %v, want a 201_unconfirmed outcome and an unconfirmed retry", h.outcomes, h.reasons)
			}
			if !h.wentDown() || !h.lastUp() {
				t.Errorf("SpineUp: got %v, want a false, then true at the end", h.ups)
			}
			if c.Mark() != ev.Pos {
				t.Errorf("mark: got %v, want %v", c.Mark(), ev.Pos)
			}
			// The next event is delivered normally.
			next := testEvent("s", 0x500, 2)
			if err := c.Publish(context.Background(), next); err != nil {
				t.Fatal(err)
			}
			if got, want := chainKeys(spine), []string{ev.Key, next.Key}; !reflect.DeepEqual(got, want) {
				t.Fatalf("chain: got %v, want %v", got, want)
			}
			if ok, at, why := spine.Verify(); !ok {
				t.Fatalf("chain broken at %d: %s", at, why)
			}
		})
	}
}

func TestRedeliverUnconfirmed201(t *testing.T) {
	for _, f := range []spinetest.Fault{spinetest.Fault201HTML, spinetest.Fault201HTMLAfter, spinetest.FaultStallBody} {
		t.Run(f.String(), func(t *testing.T) {
			spine := spinetest.Start(t)
			spine.SetStall(0)
			c, h, _ := newHookedClient(t, spine.URL(), nil)
			old := testEvent("s", 0x600, 3)
			spine.FailNext(1, f)
			if err := c.Redeliver(context.Background(), old.Source, keptLetter(t, old)); err != nil {
				t.Fatalf("Redeliver: %v", err)
			}
			if got, want := chainKeys(spine), []string{old.Key}; !reflect.DeepEqual(got, want) {
				t.Fatalf("chain: got %v, want exactly %v", got, want)
			}
			if !slices.Contains(h.reasons, "unconfirmed") {
				t.Errorf("retry reasons: got %v, want unconfirmed", h.reasons)
			}
		})
	}
}

// TestSpineRefusalsAreRetried: answers by which the spine, or what stands
// in its place, refuses the client are waited out, reported as the spine
// being down, explained in the log, and never turn the event into a dead
// letter.
func TestSpineRefusalsAreRetried(t *testing.T) {
	tests := []struct {
		name   string
		fault  spinetest.Fault // through the double, or
		status int             // through a stand-in
		reason string
		fix    string // in the log
	}{
		{"401", spinetest.Fault401, 0, "refused_auth", "check AUDIT_STREAM_TOKEN"},
		{"403", spinetest.Fault403, 0, "refused_auth", "check AUDIT_STREAM_TOKEN"},
		{"404", spinetest.Fault404, 0, "refused_spine", "check AUDIT_STREAM_URL"},
		{"405", spinetest.Fault405, 0, "refused_spine", "check AUDIT_STREAM_URL"},
		{"302", spinetest.Fault302, 0, "refused_redirect", "check AUDIT_STREAM_URL: it redirects (to http://sso.example/login)"},
		{"301", 0, http.StatusMovedPermanently, "refused_redirect", "check AUDIT_STREAM_URL: it redirects"},
		{"307", 0, http.StatusTemporaryRedirect, "refused_redirect", "check AUDIT_STREAM_URL: it redirects"},
		{"407", 0, http.StatusProxyAuthRequired, "refused_auth", "HTTPS_PROXY"},
		{"409", 0, http.StatusConflict, "refused_spine", "check AUDIT_STREAM_URL"},
		{"410", 0, http.StatusGone, "refused_spine", "check AUDIT_STREAM_URL"},
		{"415", 0, http.StatusUnsupportedMediaType, "refused_spine", "check AUDIT_STREAM_URL"},
	}
	for _, via := range []string{"Publish", "Redeliver"} {
		for _, tt := range tests {
			t.Run(via+"/"+tt.name, func(t *testing.T) {
				spine := spinetest.Start(t)
				spine.SetRedirect("http://sso.example/login?state=s3cr3t")
				url := spine.URL()
				if tt.fault != spinetest.FaultNone {
					spine.FailNext(3, tt.fault)
				} else {
					url = standIn(t, spine, 3, func(w http.ResponseWriter, r *http.Request) {
						if tt.status < 400 {
							w.Header().Set("Location", "https://elsewhere.example/events")
						}
						status(tt.status, "<html>no</html>")(w, r)
					})
				}
				c, h, logs := newHookedClient(t, url, func(c *ClientConfig) { c.Token = "tok-3n7" })
				ev := testEvent("s", 0x700, 1)
				var err error
				if via == "Publish" {
					err = c.Publish(context.Background(), ev)
				} else {
					err = c.Redeliver(context.Background(), ev.Source, keptLetter(t, ev))
				}
				if err != nil {
					t.Fatalf("got %v, want delivery once the refusals stop", err)
				}
				if got, want := chainKeys(spine), []string{ev.Key}; !reflect.DeepEqual(got, want) {
					t.Fatalf("chain: got %v, want exactly %v", got, want)
				}
				if n := countOf(h.reasons, tt.reason); n != 3 {
					t.Errorf("retry reasons: got %v, want %s three times", h.reasons, tt.reason)
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
}

func countOf(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}

// TestEventRefusalsAreRejected: 400, 413 and 422 speak about the event and
// become a RejectedError (a dead letter), with nothing appended.
func TestEventRefusalsAreRejected(t *testing.T) {
	for _, via := range []string{"Publish", "Redeliver"} {
		for _, code := range []int{http.StatusUnprocessableEntity, http.StatusBadRequest, http.StatusRequestEntityTooLarge} {
			t.Run(fmt.Sprint(via, "/", code), func(t *testing.T) {
				spine := spinetest.Start(t)
				url := spine.URL()
				if code == http.StatusUnprocessableEntity {
					spine.FailNext(1, spinetest.FaultReject)
				} else {
					url = standIn(t, spine, 1, status(code, `{"detail":"refused"}`))
				}
				c, h, _ := newHookedClient(t, url, nil)
				ev := testEvent("s", 0x800, 1)
				var err error
				if via == "Publish" {
					err = c.Publish(context.Background(), ev)
				} else {
					err = c.Redeliver(context.Background(), ev.Source, keptLetter(t, ev))
				}
				var rej *RejectedError
				if !errors.As(err, &rej) || rej.StatusCode != code {
					t.Fatalf("got %v, want a RejectedError with status %d", err, code)
				}
				if n := len(spine.Events()); n != 0 {
					t.Errorf("chain: got %d events, want none", n)
				}
				if !h.lastUp() {
					t.Errorf("SpineUp: got %v, want true (the spine answered)", h.ups)
				}
			})
		}
	}
}

// TestRedirectIsNeverFollowed: a 302 to another host is not followed, so
// that host never sees the request nor the token, and the event is not
// dead-lettered.
func TestRedirectIsNeverFollowed(t *testing.T) {
	var visits atomic.Int64
	var sawToken atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		visits.Add(1)
		if r.Header.Get("Authorization") != "" {
			sawToken.Store(true)
		}
		w.WriteHeader(http.StatusCreated) // a trap: "accepted" by the wrong host
	}))
	defer other.Close()
	spine := spinetest.Start(t)
	spine.SetRedirect(other.URL + "/events")
	spine.FailNextRead(1, spinetest.Fault302)
	spine.FailNext(2, spinetest.Fault302)
	c, h, _ := newHookedClient(t, spine.URL(), func(c *ClientConfig) { c.Token = "tok-3n7" })
	ev := testEvent("s", 0x900, 1)
	if err := c.Publish(context.Background(), ev); err != nil {
		t.Fatalf("got %v, want delivery once the redirects stop", err)
	}
	if n := visits.Load(); n != 0 || sawToken.Load() {
		t.Fatalf("the other host got %d requests (token seen: %v), want none", n, sawToken.Load())
	}
	if got, want := chainKeys(spine), []string{ev.Key}; !reflect.DeepEqual(got, want) {
		t.Fatalf("chain: got %v, want exactly %v", got, want)
	}
	if n := countOf(h.reasons, "refused_redirect"); n != 3 {
		t.Errorf("retry reasons: got %v, want refused_redirect three times (one read-back, two POSTs)", h.reasons)
	}
	// Health and Kinds do not follow either.
	spine.SetRedirect(other.URL + "/healthz")
	hs := httptest.NewServer(http.RedirectHandler(other.URL+"/healthz", http.StatusFound))
	defer hs.Close()
	c2, _, _ := newHookedClient(t, hs.URL, func(c *ClientConfig) { c.Token = "tok-3n7" })
	if err := c2.Health(context.Background()); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Errorf("Health: got %v, want a redirect refusal", err)
	}
	if _, err := c2.Kinds(context.Background()); err == nil {
		t.Errorf("Kinds: got no error, want a redirect refusal")
	}
	if n := visits.Load(); n != 0 {
		t.Errorf("the other host got %d requests, want none", n)
	}
}

// TestReadBackRefusalReportsSpineDown: a read-back that is refused (or not
// the spine's JSON array) counts as the spine being down, and is retried
// under the refusal's reason.
func TestReadBackRefusalReportsSpineDown(t *testing.T) {
	t.Run("401", func(t *testing.T) {
		spine := spinetest.Start(t)
		spine.FailNextRead(2, spinetest.Fault401)
		c, h, logs := newHookedClient(t, spine.URL(), nil)
		ev := testEvent("s", 0xA00, 1)
		if err := c.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if want := []bool{false, false, true}; !reflect.DeepEqual(h.ups[:3], want) {
			t.Errorf("SpineUp: got %v, want it to start with %v", h.ups, want)
		}
		if want := []string{"refused_auth", "refused_auth"}; !reflect.DeepEqual(h.reasons, want) {
			t.Errorf("retry reasons: got %v, want %v", h.reasons, want)
		}
		if !strings.Contains(logs.String(), "GET /events with HTTP 401 Unauthorized: check AUDIT_STREAM_TOKEN") {
			t.Errorf("log: got\n%s\nwant the read-back's 401 explained", logs.String())
		}
		if got := chainKeys(spine); len(got) != 1 {
			t.Errorf("chain: got %v, want one event", got)
		}
	})
	t.Run("200 that is not JSON", func(t *testing.T) {
		spine := spinetest.New()
		var served atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && served.Add(1) == 1 {
				_, _ = io.WriteString(w, "<html>portal</html>")
				return
			}
			spine.ServeHTTP(w, r)
		}))
		defer srv.Close()
		c, h, _ := newHookedClient(t, srv.URL, nil)
		if err := c.Publish(context.Background(), testEvent("s", 0xA00, 1)); err != nil {
			t.Fatal(err)
		}
		if len(h.ups) == 0 || h.ups[0] || !h.lastUp() {
			t.Errorf("SpineUp: got %v, want false first, true at the end", h.ups)
		}
		if want := []string{"read_back"}; !reflect.DeepEqual(h.reasons, want) {
			t.Errorf("retry reasons: got %v, want %v", h.reasons, want)
		}
	})
	t.Run("Health 401", func(t *testing.T) {
		srv := httptest.NewServer(status(http.StatusUnauthorized, ""))
		defer srv.Close()
		c, h, _ := newHookedClient(t, srv.URL, nil)
		if err := c.Health(context.Background()); err == nil || !strings.Contains(err.Error(), "AUDIT_STREAM_TOKEN") {
			t.Errorf("Health: got %v, want a 401 that names AUDIT_STREAM_TOKEN", err)
		}
		if want := []bool{false}; !reflect.DeepEqual(h.ups, want) {
			t.Errorf("SpineUp: got %v, want %v", h.ups, want)
		}
	})
}

func TestClassify(t *testing.T) {
	tests := []struct {
		code int
		want verdict
	}{
		{200, unknown}, {202, unknown}, {204, unknown},
		{301, refused}, {302, refused}, {303, refused}, {304, refused}, {307, refused}, {308, refused},
		{400, rejected}, {413, rejected}, {422, rejected},
		{401, refused}, {403, refused}, {404, refused}, {405, refused}, {407, refused}, {409, refused},
		{410, refused}, {411, refused}, {415, refused}, {421, refused}, {426, refused}, {431, refused},
		{408, unknown}, {429, notSent},
		{500, unknown}, {502, unknown}, {503, unknown}, {504, unknown},
	}
	for _, tt := range tests {
		if got := classify(tt.code); got != tt.want {
			t.Errorf("classify(%d): got %d, want %d", tt.code, got, tt.want)
		}
	}
}

// validEcho is a 201 body as the spine writes it for key.
func validEcho(key string) string {
	return `{"event_id":42,"timestamp":"2026-05-15T03:14:15+00:00","kind":"other","source":"s",` +
		`"payload":{"table":"public.t","new":{"metadata":{"idempotency_key":"not-this-one"},"n":[1,2.5,{"a":null}],"big":1e999},` +
		`"metadata":{"commit_lsn":"0/1","idempotency_key":"` + key + `","redelivered":true}},` +
		`"prev_hash":"` + strings.Repeat("0", 64) + `","hash":"` + strings.Repeat("9f", 32) + `"}`
}

func TestConfirm(t *testing.T) {
	const key = "pgaudit-cdc:7301:slot:0000000000000100:1"
	good := validEcho(key)
	replace := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("validEcho has no %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"the stored event", good, true},
		{"trailing newline", good + "\n", true},
		{"fields in another order", `{"hash":"` + strings.Repeat("a", 64) + `","payload":{"metadata":{"idempotency_key":"` + key +
			`"}},"source":"s","kind":"k","prev_hash":"` + strings.Repeat("b", 64) + `","timestamp":"t","event_id":1}`, true},
		{"html", "<!DOCTYPE html><html></html>", false},
		{"empty", "", false},
		{"null", "null", false},
		{"an array", "[" + good + "]", false},
		{"another key", replace(key, key+"0"), false},
		{"no key", replace(`"idempotency_key":"`+key+`",`, ""), false},
		{"key only nested in the row", replace(`"metadata":{"commit_lsn":"0/1","idempotency_key":"`+key+`","redelivered":true}`, `"metadata":{}`), false},
		{"metadata not an object", replace(`"metadata":{"commit_lsn":"0/1","idempotency_key":"`+key+`","redelivered":true}`, `"metadata":["`+key+`"]`), false},
		{"key not a string", replace(`"idempotency_key":"`+key+`"`, `"idempotency_key":{"k":"`+key+`"}`), false},
		{"payload not an object", `{"event_id":1,"timestamp":"t","kind":"k","source":"s","payload":"` + key + `","prev_hash":"` + strings.Repeat("0", 64) + `","hash":"` + strings.Repeat("0", 64) + `"}`, false},
		{"no event_id", replace(`"event_id":42,`, ""), false},
		{"event_id 0", replace(`"event_id":42`, `"event_id":0`), false},
		{"event_id negative", replace(`"event_id":42`, `"event_id":-3`), false},
		{"event_id a fraction", replace(`"event_id":42`, `"event_id":4.2`), false},
		{"event_id in exponent form", replace(`"event_id":42`, `"event_id":4e1`), false},
		{"event_id a string", replace(`"event_id":42`, `"event_id":"42"`), false},
		{"no hash", replace(`,"hash":"`+strings.Repeat("9f", 32)+`"`, ""), false},
		{"upper-case hash", replace(strings.Repeat("9f", 32), strings.Repeat("9F", 32)), false},
		{"short hash", replace(strings.Repeat("9f", 32), strings.Repeat("9f", 31)), false},
		{"no prev_hash", replace(`"prev_hash":"`+strings.Repeat("0", 64)+`",`, ""), false},
		{"no timestamp", replace(`"timestamp":"2026-05-15T03:14:15+00:00",`, ""), false},
		{"empty kind", replace(`"kind":"other"`, `"kind":""`), false},
		{"no source", replace(`"source":"s",`, ""), false},
		{"source not a string", replace(`"source":"s"`, `"source":1`), false},
		{"trailing data", good + "<html>", false},
		{"two events", good + good, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := confirmOK(strings.NewReader(tt.body), key)
			if (err == nil) != tt.ok {
				t.Errorf("got %v, want ok=%v", err, tt.ok)
			}
		})
	}
	t.Run("every truncation is unexpected EOF", func(t *testing.T) {
		for n := 0; n < len(good); n++ {
			err := confirmOK(strings.NewReader(good[:n]), key)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("body cut at %d of %d: got %v, want io.ErrUnexpectedEOF", n, len(good), err)
			}
		}
	})
	t.Run("a read error is not accepted", func(t *testing.T) {
		timeout := errors.New("context deadline exceeded (Client.Timeout or context cancellation while reading body)")
		for _, n := range []int{0, 10, len(good) / 2, len(good)} {
			r := io.MultiReader(strings.NewReader(good[:n]), iotest.ErrReader(timeout))
			if err := confirmOK(r, key); !errors.Is(err, timeout) {
				t.Errorf("read error after %d bytes: got %v, want %v", n, err, timeout)
			}
		}
	})
	t.Run("one byte at a time", func(t *testing.T) {
		if err := confirmOK(iotest.OneByteReader(strings.NewReader(good)), key); err != nil {
			t.Errorf("got %v, want nil", err)
		}
	})
}

// TestConfirmDoesNotHoldTheEcho: a 201 echoing a 64 MB event is checked
// without keeping the echo in memory.
func TestConfirmDoesNotHoldTheEcho(t *testing.T) {
	const key = "pgaudit-cdc:7301:slot:0000000000000100:1"
	chunk := `"` + strings.Repeat("x", 1<<20) + `"`
	body := io.MultiReader(
		strings.NewReader(`{"event_id":1,"timestamp":"t","kind":"k","source":"s","prev_hash":"`+strings.Repeat("0", 64)+`","hash":"`+strings.Repeat("0", 64)+`","payload":{"new":{"rows":[`),
		&repeatReader{s: chunk, sep: ",", n: 64},
		strings.NewReader(`]},"metadata":{"idempotency_key":"`+key+`"}}}`),
	)
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	sampler := &heapSampler{r: body, peak: m.HeapAlloc}
	base := m.HeapAlloc
	if err := confirmOK(sampler, key); err != nil {
		t.Fatal(err)
	}
	if grown := int64(sampler.peak) - int64(base); grown > 32<<20 {
		t.Errorf("heap grew by %d MB checking a 64 MB echo, want far less", grown>>20)
	} else {
		t.Logf("heap grew by at most %.1f MB checking a 64 MB echo", float64(grown)/(1<<20))
	}
}

// heapSampler reads r and records the largest heap in use seen every MB.
type heapSampler struct {
	r          io.Reader
	read, next int
	peak       uint64
}

func (s *heapSampler) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.read += n
	if s.read >= s.next {
		s.next = s.read + 1<<20
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		s.peak = max(s.peak, m.HeapAlloc)
	}
	return n, err
}

// repeatReader yields s n times, separated by sep, without holding the
// result.
type repeatReader struct {
	s, sep string
	n      int
	cur    *strings.Reader
}

func (r *repeatReader) Read(p []byte) (int, error) {
	for {
		if r.cur != nil && r.cur.Len() > 0 {
			return r.cur.Read(p)
		}
		if r.n == 0 {
			return 0, io.EOF
		}
		r.n--
		next := r.s
		if r.n > 0 {
			next += r.sep
		}
		r.cur = strings.NewReader(next)
	}
}

// TestKinds: the kinds are read where the real spine lists them (inline in
// PublishRequest), from an older spine's EventKind schema, and an answer
// without either is an error.
func TestKinds(t *testing.T) {
	spine := spinetest.Start(t)
	c := newTestClient(t, spine.URL())
	got, err := c.Kinds(context.Background())
	if err != nil || !reflect.DeepEqual(got, spinetest.DefaultKinds) {
		t.Fatalf("double: got %v, %v, want %v", got, err, spinetest.DefaultKinds)
	}
	spine.SetKinds("cdc_row_changed", "other")
	if got, err := c.Kinds(context.Background()); err != nil || !reflect.DeepEqual(got, []string{"cdc_row_changed", "other"}) {
		t.Fatalf("after SetKinds: got %v, %v, want [cdc_row_changed other]", got, err)
	}
	for _, tt := range []struct {
		name, doc string
		want      []string
	}{
		{"inline enum wins", `{"components":{"schemas":{"PublishRequest":{"properties":{"kind":{"enum":["a","b"]}}},"EventKind":{"enum":["old"]}}}}`, []string{"a", "b"}},
		{"EventKind of an older spine", `{"components":{"schemas":{"PublishRequest":{"properties":{"kind":{"$ref":"#/components/schemas/EventKind"}}},"EventKind":{"enum":["old"]}}}}`, []string{"old"}},
		{"other enums are ignored", `{"components":{"schemas":{"Level":{"enum":[1,2]},"PublishRequest":{"properties":{"kind":{"enum":["a"]}}}}}}`, []string{"a"}},
		{"no kinds", `{"components":{"schemas":{"PublishRequest":{"properties":{"kind":{"type":"string"}}}}}}`, nil},
		{"not JSON", `<html></html>`, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(status(http.StatusOK, tt.doc))
			defer srv.Close()
			got, err := newTestClient(t, srv.URL).Kinds(context.Background())
			if tt.want == nil {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v, want %v", got, err, tt.want)
			}
		})
	}
}

// BenchmarkConfirm is the check of a typical 201 echo (about 1 kB).
func BenchmarkConfirm(b *testing.B) {
	const key = "pgaudit-cdc:7441925118437418807:pgaudit_cdc:000000016B374D48:1"
	echo := validEcho(key)
	b.SetBytes(int64(len(echo)))
	b.ReportAllocs()
	for b.Loop() {
		if err := confirmOK(strings.NewReader(echo), key); err != nil {
			b.Fatal(err)
		}
	}
}

// confirmReference is confirm written plainly with encoding/json, holding
// the whole answer: FuzzConfirm checks that both agree.
func confirmReference(b []byte, key string) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		return false
	}
	hexRE := regexp.MustCompile(`^[0-9a-f]{64}$`)
	id, _ := m["event_id"].(json.Number)
	hash, _ := m["hash"].(string)
	prev, _ := m["prev_hash"].(string)
	meta, _ := dig(m, "payload", "metadata").(map[string]any)
	got, isStr := meta["idempotency_key"].(string)
	for _, f := range []string{"kind", "source", "timestamp"} {
		if s, _ := m[f].(string); s == "" {
			return false
		}
	}
	_, payload := m["payload"].(map[string]any)
	return regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(string(id)) && hexRE.MatchString(hash) &&
		hexRE.MatchString(prev) && payload && isStr && got == key
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, _ := v.(map[string]any)
		v = m[k]
	}
	return v
}

func FuzzConfirm(f *testing.F) {
	const key = "pgaudit-cdc:7301:slot:0000000000000100:1"
	good := validEcho(key)
	for _, s := range []string{
		good, good + " \n", good + "x", good[:len(good)/2], "", "null", "{}", "<html>",
		strings.Replace(good, `"event_id":42`, `"event_id":42.0`, 1),
		strings.Replace(good, `"hash"`, `"h\u0061sh"`, 1),
		strings.Replace(good, `"kind":"other"`, `"kind":"other","kind":""`, 1),
		strings.Replace(good, `"source":"s"`, `"source":"\u00e9\ud800"`, 1),
		strings.Replace(good, `"n":[1,2.5`, `"n":[-0,1E+2,0.5e-3,true,false,null,"\"\\\/\b\f\n\r\t"`, 1),
		strings.Replace(good, `"n":[1,2.5`, `"n":[01`, 1),
		strings.Replace(good, `"n":[1,2.5`, `"n":[1.`, 1),
		strings.Replace(good, `"n":[1,2.5`, `"n":[1,]`, 1),
		strings.Replace(good, `"n":[1,2.5`, `"n":[tru`, 1),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := confirmOK(bytes.NewReader(b), key)
		if want := confirmReference(b, key); (err == nil) != want {
			t.Fatalf("confirm(%q): got %v, want ok=%v (encoding/json)", b, err, want)
		}
	})
}

// confirmOK is confirm without the event_id.
func confirmOK(r io.Reader, key string) error {
	_, err := confirm(r, key)
	return err
}
