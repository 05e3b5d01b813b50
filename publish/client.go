package publish

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is the spine's base URL, e.g. http://audit-stream:8093.
	URL string
	// Token, when set, is sent as Authorization: Bearer.
	Token string
	// CAFile, when set, is a PEM bundle trusted for HTTPS instead of the
	// system roots.
	CAFile string
	// Timeout is how long the spine may be silent (default 30s): a request
	// that stops moving, the wait for an answer to start, each wait for
	// more of it (stall.go). Only the small requests (/healthz,
	// /openapi.json) are bounded by it as a whole.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries (defaults
	// 200ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// MaxInFlight bounds the POSTs in flight on the connection (pipelining,
	// default DefaultMaxInFlight): the window adapts below it (window.go);
	// 1 sends one at a time.
	MaxInFlight int
	// MaxInFlightBytes bounds the bytes of the POSTs in flight (default
	// DefaultMaxInFlightBytes); one larger event is still sent, alone.
	MaxInFlightBytes int
	// DedupWindow is the most events of one source read back from the spine
	// to find what this agent already delivered (default 10000, at most
	// 100000, the spine's limit).
	DedupWindow int
	Logger      *slog.Logger
	Hooks       Hooks
}

// Hooks let the caller observe delivery (metrics). Nil fields are skipped.
type Hooks struct {
	// Post is called after every POST with its outcome and duration: "201"
	// (the answer is the stored event), "201_unconfirmed" (a 201 whose body
	// is not: HTML, truncated, another event), "3xx", "4xx", "5xx", "429",
	// "408", "other" (any other status) or "error" (no answer).
	Post func(outcome string, d time.Duration)
	// Retry is called before each wait, with the reason: "connection",
	// "5xx", "408", "429", "unexpected", "unconfirmed", "read_back", or,
	// while the spine refuses this client as a whole, "refused_auth",
	// "refused_spine" or "refused_redirect".
	Retry func(reason string, wait time.Duration)
	// Skipped is called for an event found already in the spine.
	Skipped func(ev *envelope.Event)
	// Forgery is called once per key for an event whose key the read-back
	// found on an event that is not what the agent sends for that change
	// (forgedID): another producer wrote it. The real event is delivered.
	Forgery func(ev *envelope.Event, forgedID int64)
	// SpineUp reports whether the last request was answered by a spine that
	// serves this client. It is false after no answer, after an answer by
	// which the spine (or what stands in its place) refuses the client
	// (3xx, 401, 403, 404, 405, ...), after a 201 that is not the stored
	// event, and after a read-back or health check that did not answer 200.
	SpineUp func(up bool)
	// Window is called with the pipelining window whenever it is sized
	// anew (window.go).
	Window func(n int)
}

// Client delivers events to the audit-stream spine exactly once per
// idempotency key as long as the spine's history can be read back: Publish
// one event, PublishBatch a batch with several POSTs in flight on one
// keep-alive connection (pipelining, see pipeline.go; ClientConfig.MaxInFlight,
// 1 for one at a time).
//
// The spine has no de-duplication, so the client keeps a high-water mark: the
// highest position of this agent's events known to be in the spine (or
// otherwise handled). Events are written in position order, so every event at
// or below the mark is already handled and is skipped. The mark is learnt from
// the spine (GET /events?source=...) the first time a source is seen and again
// after any POST whose outcome is unknown, instead of re-sending blindly; after
// a failure inside a pipelined window the client reads back which keys the
// spine holds (see PublishBatch). A Client is used by one goroutine
// (PublishBatch writes from a goroutine of its own while it reads answers).
type Client struct {
	cfg  ClientConfig
	base *url.URL
	http *http.Client
	// readHTTP serves the POSTs and read-backs, which can be many MB: it
	// has no timeout for the whole request, they are bounded by silence
	// instead (withStallTimeout). http serves the small requests.
	readHTTP *http.Client
	log      *slog.Logger
	systemID string
	slot     string
	// eventsURL is POST /events, built once.
	eventsURL string

	// mark is the highest position delivered in order in this session:
	// everything up to it is handled.
	mark    envelope.Position
	checked map[string]bool
	// present holds, per source, the keys of this identity read back from
	// the spine: with several requests in flight a later event can be in the
	// chain while an earlier one is not, so the read-back learns which keys
	// are there, not only the highest. handled holds keys handled otherwise
	// (dead letters).
	present map[string]map[string]envelope.Position
	// copies holds, per key read back, the event_ids and digests found
	// under it; forgeries the keys already reported as forged.
	copies    map[string][]copyOf
	forgeries map[string]bool
	handled   map[string]bool
	// unkept holds the keys of events the spine refused for good in a
	// pipelined window that are not kept as dead letters yet
	// (MarkKeyHandled): the mark may pass them, as the events after them
	// landed, but they are not handled until kept.
	unkept map[string]bool
	// maxPresent is the highest position known to be in the chain: an event
	// sent after it lands out of commit order and is marked late.
	maxPresent envelope.Position

	// quietAt (Unix nanoseconds): requests this client gave up on while
	// the spine may still have been working on them (its own stop, a read
	// timeout) can still be appended until then. Every read-back waits for
	// it: one made sooner could miss them, and the event would be sent
	// again, a duplicate in the chain.
	quietAt atomic.Int64
	// held is the last event this client appended; verified the last one
	// CheckHeld found held, or else the first appended.
	heldMu   sync.Mutex
	held     stored
	verified stored
	// lastEventID is the highest event_id the spine gave, in an answer or
	// a read: a later append below it means the spine lost its history.
	lastEventID atomic.Int64
	// postDown says the last POST answer left the spine down (see readUp).
	postDown atomic.Bool

	// Pipelining (see pipeline.go).
	tlsConfig    *tls.Config
	pipe         *pipeConn
	noPipelining bool
	pipeCloses   int          // windows in a row cut short by the server closing
	sizer        *windowSizer // the pipelining window (window.go)
}

// NewClient validates cfg and builds a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid audit-stream URL %q: want http(s)://host[:port]", redactURL(cfg.URL))
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 10000
	}
	if cfg.DedupWindow > 100000 {
		return nil, fmt.Errorf("invalid dedup window %d: the spine returns at most 100000 events", cfg.DedupWindow)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxResponseHeaderBytes = maxAnswerHead
	transport.MaxIdleConnsPerHost = 4
	// A request's progress is what --spine-timeout measures: keep the
	// kernel from taking megabytes of it at once (limitUnsent). Reads and
	// writes are raw system calls (package rawsock).
	transport.DialContext = rawsock.WrapDial((&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: limitUnsent}).DialContext)
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the audit-stream CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("audit-stream CA file %q holds no PEM certificate", cfg.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	u.Path = strings.TrimRight(u.Path, "/")
	// A redirect is answered as it is, never followed: the spine does not
	// redirect, so one means the URL is wrong, and the token must reach no
	// host but the configured one.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{
		cfg:       cfg,
		base:      u,
		eventsURL: u.String() + "/events",
		http:      &http.Client{Transport: transport, Timeout: cfg.Timeout, CheckRedirect: noRedirect},
		readHTTP:  &http.Client{Transport: transport, CheckRedirect: noRedirect},
		log:       cfg.Logger,
		checked:   map[string]bool{},
		present:   map[string]map[string]envelope.Position{},
		copies:    map[string][]copyOf{},
		forgeries: map[string]bool{},
		handled:   map[string]bool{},
		unkept:    map[string]bool{},
		tlsConfig: transport.TLSClientConfig,
		sizer:     newWindowSizer(cfg.MaxInFlight),
	}, nil
}

// SetIdentity tells the client which idempotency keys are its own: those of
// this server and slot. It must be called before Publish.
//
// The agent calls it at the start of every replication session: it also
// forgets which sources were read back, so that each source is read back
// again before its first event. A POST abandoned when the previous session
// broke may have been appended after all.
func (c *Client) SetIdentity(systemID, slot string) {
	if c.systemID != systemID || c.slot != slot {
		c.mark, c.maxPresent = envelope.Position{}, envelope.Position{}
		c.handled, c.unkept = map[string]bool{}, map[string]bool{}
		// A new generation (after an accepted gap, a spine that lost its
		// history among them): what the spine held before says nothing.
		c.heldMu.Lock()
		c.held, c.verified = stored{}, stored{}
		c.heldMu.Unlock()
		c.lastEventID.Store(0)
	}
	c.checked = map[string]bool{}
	c.present = map[string]map[string]envelope.Position{}
	c.copies = map[string][]copyOf{}
	c.systemID, c.slot = systemID, slot
}

// MarkHandled raises the high-water mark: events at or before p are handled
// (delivered, or kept as dead letters) and will be skipped.
func (c *Client) MarkHandled(p envelope.Position) {
	if c.mark.Less(p) {
		c.mark = p
	}
}

// MarkKeyHandled records that the event with key is handled (kept as a dead
// letter): a replay of it is not sent.
func (c *Client) MarkKeyHandled(key string) {
	c.handled[key] = true
	delete(c.unkept, key)
}

// isHandled says whether ev is already in the spine or otherwise handled.
func (c *Client) isHandled(ev *envelope.Event) bool {
	if c.handled[ev.Key] {
		return true
	}
	if c.unkept[ev.Key] {
		// Refused, and keeping it as a dead letter did not finish (the
		// session ended first): sent again, it is refused again and kept.
		return false
	}
	if !c.mark.Less(ev.Pos) {
		return true
	}
	if _, ok := c.present[ev.Source][ev.Key]; !ok {
		return false
	}
	return c.authentic(ev)
}

// copyOf is an event read back under one of this agent's keys: its
// event_id and the digest of its content (ok false: unreadable).
type copyOf struct {
	id     int64
	digest [32]byte
	ok     bool
}

// authentic reports whether the spine holds ev as the agent would send it:
// a copy under its key whose content digests to ev's. A copy that does not
// is a forgery: another producer pre-empted the key. It is reported once
// (Hooks.Forgery), and ev is delivered anyway, naming the forgery
// (metadata.supersedes_event_id), so that a verifier shows both.
func (c *Client) authentic(ev *envelope.Event) bool {
	d := ev.Digest()
	var forged int64
	for _, cp := range c.copies[ev.Key] {
		if cp.ok && cp.digest == d {
			return true
		}
		forged = cp.id
	}
	if forged == 0 {
		return true // present, but its content was not read (an older read-back)
	}
	if !c.forgeries[ev.Key] {
		c.forgeries[ev.Key] = true
		c.log.Error("forged event in the spine: another producer wrote an event under one of pgaudit-cdc's idempotency keys with other content; the real event is delivered now, naming the forgery (metadata.supersedes_event_id), and verify reports both",
			"key", ev.Key, "forged_event_id", forged, "table", ev.Table, "operation", ev.Operation,
			"fix", "find who can POST to the spine with this source and revoke it")
		if c.cfg.Hooks.Forgery != nil {
			c.cfg.Hooks.Forgery(ev, forged)
		}
	}
	if ev.Supersedes != forged {
		ev.Supersedes = forged
		ev.Finish()
	}
	return false
}

// Mark returns the high-water mark.
func (c *Client) Mark() envelope.Position { return c.mark }

// MarkFor returns the high-water mark when the client's identity is
// systemID and slot, and zero otherwise.
func (c *Client) MarkFor(systemID, slot string) envelope.Position {
	if c.systemID != systemID || c.slot != slot {
		return envelope.Position{}
	}
	return c.mark
}

// Publish delivers ev and returns nil once the spine holds it (or held it
// already). It retries transient failures, and refusals of the client as a
// whole (a wrong token or URL), with capped exponential backoff until ctx
// ends; it returns a *RejectedError when the spine refuses this event.
func (c *Client) Publish(ctx context.Context, ev *envelope.Event) error {
	if c.systemID == "" {
		return errors.New("BUG: publish.Client used before SetIdentity")
	}
	if ev.Key == "" {
		return errors.New("BUG: publish.Client.Publish of an event without an idempotency key")
	}
	if trail.IsTrailKey(ev.Key) {
		return c.publishTrailEvent(ctx, ev)
	}
	skipped, err := c.deliver(ctx, ev.Body, ev.Key, !c.checked[ev.Source],
		func(ctx context.Context, readBack bool) (bool, error) {
			if readBack {
				if err := c.learn(ctx, ev.Source, ev.Pos); err != nil {
					return false, err
				}
			}
			return c.isHandled(ev), nil
		})
	if err != nil {
		if IsRejected(err) {
			c.unkept[ev.Key] = true
		}
		return err
	}
	// Events are delivered one after another here: each one handled,
	// skipped or sent, extends the handled prefix.
	c.MarkHandled(ev.Pos)
	if skipped {
		if c.cfg.Hooks.Skipped != nil {
			c.cfg.Hooks.Skipped(ev)
		}
		return nil
	}
	if c.maxPresent.Less(ev.Pos) {
		c.maxPresent = ev.Pos
	}
	return nil
}

// publishTrailEvent delivers a KEY or SEAL event: outside the positions of
// changes, so it is looked for by key and content, and only after an
// answer left its append in doubt.
func (c *Client) publishTrailEvent(ctx context.Context, ev *envelope.Event) error {
	d := ev.Digest()
	_, err := c.deliver(ctx, ev.Body, ev.Key, false, func(ctx context.Context, readBack bool) (bool, error) {
		if !readBack {
			return false, nil
		}
		return c.HasEvent(ctx, ev.Source, ev.Key, d[:])
	})
	return err
}

// deliver is the retry loop of Publish and Redeliver. Before each POST it
// asks held whether the envelope is already handled — reading the spine back
// (readBack) first, and again after every answer that leaves the append in
// doubt — and returns skipped when it is. It returns nil once a POST is
// accepted, a *RejectedError when the spine refuses the envelope, or ctx's
// error; everything else is waited out and retried.
func (c *Client) deliver(ctx context.Context, body []byte, key string, readBack bool,
	held func(ctx context.Context, readBack bool) (bool, error)) (skipped bool, err error) {
	attempt := 0
	for {
		done, err := held(ctx, readBack)
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if err := c.wait(ctx, &attempt, readBackReason(err), 0, err); err != nil {
				return false, err
			}
			continue
		}
		if done {
			if readBack && attempt > 0 {
				// The spine's own read shows the append an answer left in
				// doubt: it appends.
				c.up(true)
			}
			return true, nil
		}
		readBack = false
		a := c.post(ctx, body, key)
		switch a.verdict {
		case accepted:
			return false, nil
		case rejected, lost:
			return false, a.err
		case unknown:
			readBack = true
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if err := c.wait(ctx, &attempt, a.reason, a.retryAfter, a.err); err != nil {
			return false, err
		}
	}
}

// RejectedError is the spine's refusal of one event that retrying will not
// change: 400, 413 or 422, the answers about a request's body (the contract's
// validation errors, an unparseable or too large body). The agent keeps such
// an event as a dead letter and goes on.
//
// Every other 4xx, and every 3xx, is an answer about the client as a whole,
// not about the event (a wrong token, a wrong URL, a proxy in the spine's
// place): those are retried until the operator fixes the cause, and never
// become dead letters.
type RejectedError struct {
	StatusCode int
	Body       string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("the spine refused the event with HTTP %d: %s", e.StatusCode, Truncate(e.Body, 500))
}

// IsRejected reports whether err is (or wraps) a RejectedError.
func IsRejected(err error) bool {
	var r *RejectedError
	return errors.As(err, &r)
}

// readBackReason is the retry reason of a failed read-back: the refusal's
// own when the spine refuses this client (see refusedError), else
// read_back.
func readBackReason(err error) string {
	var ref *refusedError
	if errors.As(err, &ref) {
		return ref.reason()
	}
	return "read_back"
}

// refusedError is an answer by which the spine, or whatever answers at its
// URL, refuses this client rather than one event: nothing was appended, and
// sending again works once the operator has fixed the cause that Error names.
type refusedError struct {
	request    string // "POST /events"
	statusCode int
	location   string // of a redirect, redacted
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("the spine answered %s with HTTP %d %s: %s", e.request, e.statusCode,
		http.StatusText(e.statusCode), refusalFix(e.statusCode, e.location))
}

// reason is the Retry hook's reason for waiting after this refusal.
func (e *refusedError) reason() string {
	switch {
	case e.statusCode == http.StatusUnauthorized || e.statusCode == http.StatusForbidden ||
		e.statusCode == http.StatusProxyAuthRequired:
		return "refused_auth"
	case e.statusCode >= 300 && e.statusCode < 400:
		return "refused_redirect"
	default:
		return "refused_spine"
	}
}

// refusalFix says what to check for a refusal status.
func refusalFix(code int, location string) string {
	switch {
	case code == http.StatusUnauthorized:
		return "check AUDIT_STREAM_TOKEN: the spine, or a proxy in front of it, wants a valid bearer token"
	case code == http.StatusForbidden:
		return "check AUDIT_STREAM_TOKEN and what the spine, or a proxy in front of it, allows that token"
	case code == http.StatusProxyAuthRequired:
		return "a proxy between pgaudit-cdc and the spine wants credentials: check HTTP_PROXY, HTTPS_PROXY and NO_PROXY"
	case code >= 300 && code < 400:
		to := ""
		if location != "" {
			to = " (to " + location + ")"
		}
		return "check AUDIT_STREAM_URL: it redirects" + to + ", and redirects are not followed so that the token reaches no other host; set the URL the spine is served at"
	case code == http.StatusNotFound:
		return "check AUDIT_STREAM_URL: it must be the spine's base URL, to which /events is appended"
	case code == http.StatusMethodNotAllowed:
		return "check AUDIT_STREAM_URL: what answers there refuses a method the spine takes, so it is not the spine"
	default:
		return "check AUDIT_STREAM_URL and what answers there: the spine itself never gives this answer"
	}
}

// verdict is what one POST's answer means for the event.
type verdict int

const (
	// accepted: the answer is the stored event; the spine holds it.
	accepted verdict = iota
	// unknown: the event may or may not have been appended; the spine is
	// read back before the event is sent again.
	unknown
	// notSent: the event was certainly not appended (429, a connection that
	// was never made); it is sent again after the wait.
	notSent
	// refused: the spine refuses this client as a whole (*refusedError);
	// nothing was appended; the event is sent again after the wait.
	refused
	// rejected: the spine refuses this event (*RejectedError).
	rejected
	// lost: the answer is the stored event, under an event_id not beyond
	// one the spine gave before: it lost or rewrote its history
	// (*HistoryLostError).
	lost
)

// HistoryLostError says the spine lost or rewrote its history: it answered
// with an event_id not beyond one it gave before. Event ids grow by more
// than one when other producers write, but they never go back on one
// spine; an in-memory spine that restarted, or one restored from an older
// state, starts again below.
type HistoryLostError struct {
	Previous, Got int64
	Detail        string // what showed it, when not an append's event_id
}

func (e *HistoryLostError) Error() string {
	if e.Detail != "" {
		return e.Detail
	}
	return fmt.Sprintf("the spine stored an event as event_id %d after it had stored event_id %d: it lost or rewrote its history (a restart of an in-memory spine, or a restore to an older state)", e.Got, e.Previous)
}

// IsHistoryLost reports whether err says the spine lost its history.
func IsHistoryLost(err error) bool {
	var h *HistoryLostError
	return errors.As(err, &h)
}

// sawAppend checks the event_id of an append against the highest the
// client saw: it must be beyond it. It remembers the append as the last
// (CheckHeld).
func (c *Client) sawAppend(st stored) error {
	for {
		prev := c.lastEventID.Load()
		if st.id <= prev {
			return &HistoryLostError{Previous: prev, Got: st.id}
		}
		if c.lastEventID.CompareAndSwap(prev, st.id) {
			break
		}
	}
	c.heldMu.Lock()
	if st.id > c.held.id {
		c.held = st
	}
	if c.verified.id == 0 {
		// The first check reads the first append back too: a loss after
		// it takes it, even when later appends are in place.
		c.verified = st
	}
	c.heldMu.Unlock()
	return nil
}

// CheckHeld reads the last event this client appended back by its event_id
// and returns a *HistoryLostError when the spine no longer holds it there
// as it stored it. A spine that restarted empty is caught by the event_id
// of the next append only while that is not beyond the last one seen; with
// other producers writing in the meantime it is, so the agent calls this
// before it records a seal as the anchor, which lets the positions it
// covers be confirmed. Other failures are waited out and retried until ctx
// ends.
//
// It reads back two events: the last one appended, and the last one the
// previous check found. A spine loses a suffix of its history (a restart
// loses all of it, a restore what came after the copy), so a loss at any
// time since the previous check took the older one, even when appends
// after the loss put newer events of this client back in place.
func (c *Client) CheckHeld(ctx context.Context) error {
	c.heldMu.Lock()
	held, verified := c.held, c.verified
	c.heldMu.Unlock()
	if held.id == 0 {
		return nil
	}
	// Both at once, as each costs a round trip that delivery waits for; a
	// loss either finds ends the other's wait.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var older error
	var wg sync.WaitGroup
	if verified.id != 0 && verified != held {
		wg.Go(func() {
			if older = c.checkStored(ctx, verified); IsHistoryLost(older) {
				cancel()
			}
		})
	}
	newer := c.checkStored(ctx, held)
	if IsHistoryLost(newer) {
		cancel()
	}
	wg.Wait()
	for _, err := range []error{older, newer} {
		if IsHistoryLost(err) {
			return err
		}
	}
	if err := cmp.Or(older, newer); err != nil {
		return err
	}
	c.heldMu.Lock()
	if held.id > c.verified.id {
		c.verified = held
	}
	c.heldMu.Unlock()
	return nil
}

// checkStored reads ref back until an answer says whether the spine holds
// it. A 404 counts as a loss only when the spine's own count (GET /stats)
// says it holds fewer events than ref's event_id: a gateway in front of
// the spine that does not let GET /events/{id} through answers 404 too,
// and must not pass for a loss.
func (c *Client) checkStored(ctx context.Context, ref stored) error {
	attempt := 0
	for {
		got, found, err := c.storedAt(ctx, ref)
		if err == nil && found && got.hash != ref.hash {
			return c.lost(ref, "holds another event there")
		}
		if err == nil && found {
			return nil
		}
		if err == nil {
			var last int64
			if last, err = c.lastStored(ctx); err == nil {
				if last < ref.id {
					return c.lost(ref, fmt.Sprintf("answers 404, and its newest event_id is %d", last))
				}
				err = fmt.Errorf("GET /events/%d answers 404, yet the spine's newest event_id is %d: let GET /events/{id} through to the spine (a proxy or gateway in front of it answers for it)", ref.id, last)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := c.wait(ctx, &attempt, "read_back", 0, err); err != nil {
			return err
		}
	}
}

func (c *Client) lost(ref stored, what string) error {
	return &HistoryLostError{Previous: ref.id, Detail: fmt.Sprintf(
		"the spine no longer holds event %s as event_id %d (it %s): it lost or rewrote its history (a restart of an in-memory spine, or a restore to an older state)",
		ref.key, ref.id, what)}
}

// get sends GET path, with the client's credentials, on hc. A request that
// gets no answer says the spine is down; the error has no credentials in
// it.
func (c *Client) get(ctx context.Context, hc *http.Client, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	c.authorize(req)
	resp, err := hc.Do(req)
	if err != nil {
		c.readUp(false)
		return nil, redactErr(err)
	}
	return resp, nil
}

// lastStored reads the spine's newest event_id (GET /stats; 0 when it
// holds none).
func (c *Client) lastStored(ctx context.Context) (int64, error) {
	resp, err := c.get(ctx, c.http, "/stats")
	if err != nil {
		return 0, fmt.Errorf("reading the spine's stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.readUp(false)
		return 0, fmt.Errorf("reading the spine's stats: HTTP %d", resp.StatusCode)
	}
	var st struct {
		LastEventID *int64 `json:"last_event_id"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&st); err != nil {
		return 0, fmt.Errorf("reading the spine's stats: %w", err)
	}
	c.readUp(true)
	if st.LastEventID == nil {
		return 0, nil
	}
	return *st.LastEventID, nil
}

// storedAt reads GET /events/{id} of held: what is stored there (found is
// false on 404, and on another event there).
func (c *Client) storedAt(ctx context.Context, held stored) (_ stored, found bool, _ error) {
	var st stored
	other := false
	found, err := c.readEvent(ctx, held.id, func(body io.Reader) error {
		var err error
		st, err = confirm(body, held.key)
		if errors.Is(err, errOtherEvent) {
			other, err = true, nil
		}
		return err
	})
	if err != nil {
		return stored{}, false, err
	}
	if !found || other || st.id != held.id {
		return stored{}, found, nil
	}
	return st, true, nil
}

// readEvent sends GET /events/{id} and hands the event's body to read,
// every wait for it bounded by the client's timeout. found is false on 404.
func (c *Client) readEvent(ctx context.Context, id int64, read func(io.Reader) error) (found bool, _ error) {
	ctx, stall := withStallTimeout(ctx, c.cfg.Timeout)
	defer stall.stop()
	resp, err := c.get(ctx, c.readHTTP, "/events/"+strconv.FormatInt(id, 10))
	if err != nil {
		return false, fmt.Errorf("reading back event_id %d: %w", id, stall.explain(err))
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		c.readUp(true)
		return false, nil
	default:
		c.readUp(false)
		return false, fmt.Errorf("reading back event_id %d: HTTP %d", id, resp.StatusCode)
	}
	c.readUp(true)
	if err := read(stall.watch(resp.Body)); err != nil {
		return true, fmt.Errorf("reading back event_id %d: %w", id, stall.explain(err))
	}
	return true, nil
}

// sawRead raises the highest event_id seen to one read back.
func (c *Client) sawRead(id int64) {
	for {
		prev := c.lastEventID.Load()
		if id <= prev || c.lastEventID.CompareAndSwap(prev, id) {
			return
		}
	}
}

// classify tells what an answer other than 201 means.
//
// Only 400, 413 and 422 speak about the request's body, so only they reject
// the event. 401, 403 and 407 (credentials), 404, 405, 409, 410 and the
// rest of 4xx, and every 3xx, come from a spine that refuses us or from
// something that is not the spine (a proxy, a login page, a wrong path):
// the contract's spine answers none of them to POST /events, and nothing
// was appended. Dead-lettering on them would empty the stream into the
// dead-letter table during a mere misconfiguration, so they are retried.
func classify(code int) verdict {
	switch {
	case code == http.StatusTooManyRequests:
		return notSent
	case code == http.StatusRequestTimeout || code >= 500:
		// The append may have happened before the failure was reported.
		return unknown
	case code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge ||
		code == http.StatusUnprocessableEntity:
		return rejected
	case code >= 300 && code < 500:
		return refused
	default:
		// Another 2xx, or a 1xx the transport did not handle: not the
		// contract's answer, so the append is in doubt.
		return unknown
	}
}

// answer is the outcome of one POST.
type answer struct {
	verdict verdict
	// err says why the event is not accepted: a *RejectedError, a
	// *refusedError, or a transport or protocol error.
	err error
	// reason is the Retry hook's reason, retryAfter the wait the server
	// asked for.
	reason     string
	retryAfter time.Duration
}

// post sends body once and judges the answer. A 201 counts as accepted only
// when its body is the stored event with this key (see confirm); anything
// else that may have been appended is unknown.
//
// Like a pipelined request, it is bounded by silence, not size: the timeout
// runs from each piece of the body the transport takes, and then bounds the
// wait for the answer to start and each wait for more of it.
func (c *Client) post(ctx context.Context, body []byte, key string) answer {
	ctx, stall := withStallTimeout(ctx, c.cfg.Timeout)
	defer stall.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.eventsURL, stall.upload(body))
	if err != nil {
		return answer{verdict: notSent, reason: "connection", err: fmt.Errorf("building request: %w", err)}
	}
	req.ContentLength = int64(len(body))
	req.GetBody = func() (io.ReadCloser, error) { return stall.upload(body), nil }
	req.Header.Set("Content-Type", "application/json")
	c.authorize(req)
	start := time.Now()
	resp, err := c.readHTTP.Do(req)
	err = stall.explain(err)
	if err != nil {
		c.observe("error", start)
		c.up(false)
		// A request that may have reached the spine is checked before it
		// is sent again; one that never left (dial failure) is not.
		v := unknown
		if isDialError(err) {
			v = notSent
		} else if isTimeout(err) || ctx.Err() != nil {
			c.abandoned()
		}
		return answer{verdict: v, reason: "connection", err: fmt.Errorf("posting to the spine: %w", redactErr(err))}
	}
	defer resp.Body.Close()
	resp.Body = stall.watch(resp.Body)
	if resp.StatusCode == http.StatusCreated {
		st, err := confirm(resp.Body, key)
		if err != nil {
			// Not drained: the body may be stalled or huge. Closing it
			// closes the connection, which is what a broken answer deserves.
			c.observe("201_unconfirmed", start)
			c.up(false)
			return answer{verdict: unknown, reason: "unconfirmed",
				err: fmt.Errorf("the spine answered 201, but not with the stored event: %w", redactErr(stall.explain(err)))}
		}
		c.observe("201", start)
		c.up(true)
		if err := c.sawAppend(st); err != nil {
			return answer{verdict: lost, reason: "history_lost", err: err}
		}
		return answer{verdict: accepted}
	}
	v := classify(resp.StatusCode)
	text, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if rerr != nil && v == rejected {
		// A verdict on the event needs the whole refusal; without it the
		// answer is as good as lost.
		c.observe("error", start)
		c.up(false)
		return answer{verdict: unknown, reason: "connection", err: fmt.Errorf("reading the spine's answer: %w", redactErr(stall.explain(rerr)))}
	}
	return c.judge(resp, v, text, start)
}

// judge turns an answer other than 201, whose body (its first 64 KiB) was
// read into text, into the verdict on the event, and reports it to the
// hooks. post and the pipelined reader share it.
func (c *Client) judge(resp *http.Response, v verdict, text []byte, start time.Time) answer {
	c.observe(statusClass(resp.StatusCode), start)
	c.up(v != refused)
	a := answer{verdict: v, reason: statusClass(resp.StatusCode)}
	switch v {
	case rejected:
		a.err = &RejectedError{StatusCode: resp.StatusCode, Body: string(text)}
	case refused:
		ref := &refusedError{request: "POST /events", statusCode: resp.StatusCode, location: redactLocation(resp.Header.Get("Location"))}
		a.err, a.reason = ref, ref.reason()
	default:
		if v == unknown && resp.StatusCode < 300 {
			a.reason = "unexpected"
		}
		a.retryAfter = retryAfter(resp.Header)
		a.err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, Truncate(string(text), 200))
	}
	return a
}

// redactLocation keeps the scheme, host and path of a redirect's target:
// its user info and query may hold credentials or single-sign-on state.
func redactLocation(loc string) string {
	if loc == "" {
		return ""
	}
	u, err := url.Parse(loc)
	if err != nil {
		return "an unparseable URL"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

func (c *Client) observe(outcome string, start time.Time) {
	if c.cfg.Hooks.Post != nil {
		c.cfg.Hooks.Post(outcome, time.Since(start))
	}
}

func (c *Client) up(up bool) {
	c.postDown.Store(!up)
	c.reportUp(up)
}

// readUp reports the outcome of a read (GET). A successful read says the
// spine answers, but not that it appends: while POSTs fail (a proxy's 201
// that never reached the spine, say), the spine stays down.
func (c *Client) readUp(ok bool) {
	if ok && c.postDown.Load() {
		return
	}
	c.reportUp(ok)
}

func (c *Client) reportUp(up bool) {
	if c.cfg.Hooks.SpineUp != nil {
		c.cfg.Hooks.SpineUp(up)
	}
}

func (c *Client) authorize(req *http.Request) {
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
}

// learn reads back the newest events of source and raises the mark to the
// highest position of this agent's among them. It widens the read until it
// finds one of ours or has read the whole source (or the window).
func (c *Client) learn(ctx context.Context, source string, upTo envelope.Position) error {
	for limit := 10; ; limit *= 10 {
		if limit > c.cfg.DedupWindow {
			limit = c.cfg.DedupWindow
		}
		keys := map[string]envelope.Position{}
		copies := map[string][]copyOf{}
		var oldest envelope.Position
		seen := false
		var lowest int64 // the lowest event_id in the answer
		n, err := c.scanEvents(ctx, source, limit, func(e Stored) {
			if lowest == 0 || e.EventID < lowest {
				lowest = e.EventID
			}
			key := e.Key
			sys, slot, pos, ok := envelope.ParseKey(key)
			if !ok || sys != c.systemID || slot != c.slot {
				return
			}
			keys[key] = pos
			d, derr := e.Digest()
			copies[key] = append(copies[key], copyOf{id: e.EventID, digest: d, ok: derr == nil})
			// An event marked late or redelivered landed after newer
			// ones: it says nothing of how far back the newest events
			// reach, so it does not end the read.
			if !e.Late && !e.Redelivered && (!seen || pos.Less(oldest)) {
				oldest, seen = pos, true
			}
			if c.maxPresent.Less(pos) {
				c.maxPresent = pos
			}
		})
		if err != nil {
			return err
		}
		if seen && upTo.Less(oldest) && n >= limit && limit >= c.cfg.DedupWindow {
			// The whole window is newer than upTo and holds events of
			// ours: the rest of them (a transaction bigger than the
			// window, say) lie below it.
			if err := c.walkBack(ctx, source, upTo, lowest, keys, copies); err != nil {
				return err
			}
		}
		// Done when the newest events reach back to upTo (anything of ours
		// after it is among them), or the source or the window is read.
		if (seen && !upTo.Less(oldest)) || n < limit || limit >= c.cfg.DedupWindow {
			c.present[source] = keys
			for k, cs := range copies {
				c.copies[k] = cs
			}
			c.checked[source] = true
			return nil
		}
	}
}

// isStoredEvent says whether raw is an event as the spine stores it, as
// far as the contract guarantees for any producer's: an object with an
// integer event_id and a payload object.
func isStoredEvent(raw []byte) bool {
	var e struct {
		EventID json.Number     `json:"event_id"`
		Payload json.RawMessage `json:"payload"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return false
	}
	id, err := e.EventID.Int64()
	p := bytes.TrimLeft(e.Payload, " \t\r\n")
	return err == nil && id >= 1 && len(p) > 0 && p[0] == '{'
}

// walkBackLimit bounds walkBack, in windows' worth of events.
const walkBackLimit = 10

// walkBack reads the events below event_id below one at a time (GET
// /events/{id}: the list reads only the newest DedupWindow), newest first,
// and adds those of source and this identity to keys and copies, until it
// reaches one at or before upTo. It reads at most walkBackLimit windows'
// worth, and says so when that was not enough: what it did not see is sent
// again.
func (c *Client) walkBack(ctx context.Context, source string, upTo envelope.Position, below int64,
	keys map[string]envelope.Position, copies map[string][]copyOf) error {
	older := map[string][]copyOf{} // newest first
	defer func() {
		for k, cs := range older {
			slices.Reverse(cs)
			copies[k] = append(cs, copies[k]...)
		}
	}()
	read := 0
	for id := below - 1; id >= 1; id-- {
		if read >= walkBackLimit*c.cfg.DedupWindow {
			c.log.Warn("reading back a transaction bigger than the dedup window did not reach where the replay starts; events of it not found are sent again: raise --dedup-window",
				"source", source, "events_read", read, "replay_from", upTo.String(), "dedup_window", c.cfg.DedupWindow)
			return nil
		}
		read++
		raw, err := c.eventByIDRetrying(ctx, id)
		if err != nil {
			return err
		}
		if raw == nil {
			return nil // the spine's history starts after it
		}
		e, src, err := ReadStored(raw)
		if err != nil || src != source {
			continue
		}
		sys, slot, pos, ok := envelope.ParseKey(e.Key)
		if !ok || sys != c.systemID || slot != c.slot {
			continue
		}
		if _, ok := keys[e.Key]; !ok {
			keys[e.Key] = pos
		}
		d, derr := e.Digest()
		older[e.Key] = append(older[e.Key], copyOf{id: e.EventID, digest: d, ok: derr == nil})
		if !e.Late && !e.Redelivered && !upTo.Less(pos) {
			return nil
		}
	}
	return nil
}

// eventByIDRetrying is eventByID, waiting out and retrying failures until
// ctx ends: a walk of thousands of reads must not start over for one.
func (c *Client) eventByIDRetrying(ctx context.Context, id int64) ([]byte, error) {
	attempt := 0
	for {
		raw, err := c.eventByID(ctx, id)
		if err == nil || ctx.Err() != nil {
			return raw, err
		}
		if err := c.wait(ctx, &attempt, "read_back", 0, err); err != nil {
			return nil, err
		}
	}
}

// eventByID reads GET /events/{id}: the event, or nil on 404.
func (c *Client) eventByID(ctx context.Context, id int64) ([]byte, error) {
	var raw []byte
	found, err := c.readEvent(ctx, id, func(body io.Reader) (err error) {
		raw, err = io.ReadAll(body)
		return err
	})
	if err != nil || !found {
		return nil, err
	}
	c.sawRead(id)
	return raw, nil
}

// Stored is one event read back from the spine.
type Stored struct {
	envelope.Stored
	// Raw is the stored event as the spine answered it; valid during the
	// callback only.
	Raw json.RawMessage
}

// ReadStored reads what a read-back needs of a stored event (the spine's,
// or a JetStream message, which has the same shape: envelope.ReadStored)
// and its source. Raw is raw itself.
func ReadStored(raw []byte) (Stored, string, error) {
	s, err := envelope.ReadStored(raw)
	if err != nil {
		return Stored{}, "", err
	}
	return Stored{Stored: s, Raw: raw}, s.Source, nil
}

// Digest is the event's digest computed from the spine's copy
// (trail.ItemDigest): what the agent's own event digests to when the copy
// is what it sent.
func (s Stored) Digest() ([32]byte, error) {
	d, err := trail.StoredDigest(s.Raw)
	if err != nil {
		return d, fmt.Errorf("reading event %d back: %w", s.EventID, err)
	}
	return d, nil
}

// scanEvents reads GET /events?source=…&limit=… and calls fn with each
// event, one at a time: events can be large (a 20 MB row), so the answer is
// never held whole.
func (c *Client) scanEvents(ctx context.Context, source string, limit int, fn func(Stored)) (int, error) {
	if err := c.awaitQuiet(ctx); err != nil {
		return 0, err
	}
	// The answer may be hundreds of MB (a window of large rows): the
	// timeout bounds the wait for it to start and each wait for more, not
	// the whole read.
	ctx, stall := withStallTimeout(ctx, c.cfg.Timeout)
	defer stall.stop()
	q := url.Values{"source": {source}, "limit": {strconv.Itoa(limit)}}
	resp, err := c.get(ctx, c.readHTTP, "/events?"+q.Encode())
	if err != nil {
		return 0, fmt.Errorf("reading back events of source %q: %w", source, stall.explain(err))
	}
	defer resp.Body.Close()
	resp.Body = stall.watch(resp.Body)
	// Only the spine's own answer, a JSON array, counts as the spine being
	// there: a refusal or a proxy's page would otherwise keep /readyz green
	// while nothing can be delivered.
	if resp.StatusCode != http.StatusOK {
		c.readUp(false)
		if classify(resp.StatusCode) == refused {
			return 0, fmt.Errorf("reading back events of source %q: %w", source,
				&refusedError{request: "GET /events", statusCode: resp.StatusCode, location: redactLocation(resp.Header.Get("Location"))})
		}
		text, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("reading back events of source %q: HTTP %d: %s", source, resp.StatusCode, Truncate(string(text), 200))
	}
	// The list's opening bracket counts as the spine being up, whatever
	// comes after it: a long answer does not keep /readyz red.
	unreadable, firstUnreadable := 0, ""
	n, err := readArray(json.NewDecoder(resp.Body), func() { c.readUp(true) }, func(dec *json.Decoder) error {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		st, _, err := ReadStored(raw)
		if err != nil {
			// Another producer's event this client cannot read (its
			// metadata is not an object, its idempotency key not a
			// string): the spine stores any JSON payload, so one such
			// event must not stop delivery for good. It is none of
			// this agent's, whose events always read back; a copy of one
			// altered that far is not a copy, and verify reports it.
			// Anything that is not a stored event at all (no event_id,
			// no payload object) is a broken answer and fails as one.
			if !isStoredEvent(raw) {
				return err
			}
			if unreadable++; unreadable == 1 {
				firstUnreadable = Truncate(err.Error(), 200)
			}
			return nil
		}
		c.sawRead(st.EventID)
		fn(st)
		return nil
	})
	if unreadable > 0 {
		c.log.Warn("the spine holds events of this source that are not pgaudit-cdc's and cannot be read as such (another producer's); they are left aside",
			"source", source, "events", unreadable, "first_error", firstUnreadable)
	}
	if errors.Is(err, errNotArray) {
		c.readUp(false)
	}
	if err != nil {
		return n, fmt.Errorf("reading back events of source %q: %w", source, stall.explain(err))
	}
	return n, nil
}

// wait sleeps before the next attempt: capped exponential backoff with
// equal jitter (see Backoff), or the server's Retry-After when it asked for
// longer.
func (c *Client) wait(ctx context.Context, attempt *int, reason string, retryAfter time.Duration, cause error) error {
	d := backoff.Delay(*attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
	if retryAfter > d {
		d = retryAfter
	}
	*attempt++
	if c.cfg.Hooks.Retry != nil {
		c.cfg.Hooks.Retry(reason, d)
	}
	level, msg := slog.LevelWarn, "spine delivery failed; retrying"
	var ref *refusedError
	if errors.As(cause, &ref) {
		// Nothing heals by itself here: the operator must act.
		level, msg = slog.LevelError, "the spine refuses this client; retrying until the cause is fixed"
	}
	if *attempt > 1 && *attempt%10 != 0 {
		level = slog.LevelDebug // one line per ten retries keeps a long outage readable
	}
	c.log.Log(ctx, level, msg, "reason", reason, "attempt", *attempt, "wait", d.Round(time.Millisecond), "err", cause)
	return backoff.Sleep(ctx, d)
}

func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

func statusClass(code int) string {
	switch {
	case code == 201:
		return "201"
	case code == 408, code == 429:
		return strconv.Itoa(code)
	case code >= 500:
		return "5xx"
	case code >= 400:
		return "4xx"
	case code >= 300:
		return "3xx"
	default:
		return "other"
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Kinds returns the event kinds the spine advertises in its OpenAPI schema.
// The spine's pydantic v2 models inline the kinds into the request schema,
// at components.schemas.PublishRequest.properties.kind.enum; a spine whose
// schema has a separate components.schemas.EventKind (pydantic v1 style) is
// read there instead.
func (c *Client) Kinds(ctx context.Context) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+"/openapi.json", nil)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the spine's kinds: %w", redactErr(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if classify(resp.StatusCode) == refused {
			return nil, fmt.Errorf("reading the spine's kinds: %w",
				&refusedError{request: "GET /openapi.json", statusCode: resp.StatusCode, location: redactLocation(resp.Header.Get("Location"))})
		}
		return nil, fmt.Errorf("reading the spine's kinds: GET /openapi.json answered HTTP %d", resp.StatusCode)
	}
	type enum struct {
		Enum []string `json:"enum"`
	}
	// Only the two places read are typed: the other schemas may hold enums
	// of anything.
	var doc struct {
		Components struct {
			Schemas struct {
				PublishRequest struct {
					Properties struct {
						Kind enum `json:"kind"`
					} `json:"properties"`
				} `json:"PublishRequest"`
				EventKind enum `json:"EventKind"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return nil, fmt.Errorf("reading the spine's kinds: decoding /openapi.json: %w", err)
	}
	schemas := doc.Components.Schemas
	if kinds := schemas.PublishRequest.Properties.Kind.Enum; len(kinds) > 0 {
		return kinds, nil
	}
	if kinds := schemas.EventKind.Enum; len(kinds) > 0 {
		return kinds, nil
	}
	return nil, errors.New("reading the spine's kinds: /openapi.json lists none " +
		"(neither components.schemas.PublishRequest.properties.kind.enum nor components.schemas.EventKind.enum)")
}

// Health checks GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	resp, err := c.get(ctx, c.http, "/healthz")
	if err != nil {
		return fmt.Errorf("the spine at %s is unreachable: %w", c.base.Redacted(), err)
	}
	resp.Body.Close()
	c.readUp(resp.StatusCode == http.StatusOK)
	if resp.StatusCode != http.StatusOK {
		if classify(resp.StatusCode) == refused {
			return fmt.Errorf("the spine at %s: %w", c.base.Redacted(),
				&refusedError{request: "GET /healthz", statusCode: resp.StatusCode, location: redactLocation(resp.Header.Get("Location"))})
		}
		return fmt.Errorf("the spine at %s answered /healthz with HTTP %d", c.base.Redacted(), resp.StatusCode)
	}
	return nil
}

// redactErr strips credentials from URLs inside *url.Error.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			ue.URL = u.Redacted()
		}
	}
	return err
}

func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "<unparseable URL>"
}

// Redeliver sends ev, a kept envelope read back with envelope.ParseKept
// (a dead letter being retried), again outside the ordered stream, marked
// redelivered. It first looks for its key in the spine, and after an
// uncertain outcome looks again before re-sending, so the envelope is in the
// chain exactly once. Like Publish it retries until ctx ends, refusals of
// the client as a whole included; it returns a *RejectedError if the spine
// refuses the envelope again.
func (c *Client) Redeliver(ctx context.Context, source string, ev *envelope.Event) error {
	key := ev.Key
	if key == "" {
		return errors.New("BUG: publish.Client.Redeliver of an envelope without an idempotency key")
	}
	// Redelivered events sit out of commit order in the chain, so the
	// read-back (learn) does not let them say how far back it reached.
	ev.MarkRedelivered()
	d := ev.Digest()
	_, err := c.deliver(ctx, ev.Body, key, true,
		func(ctx context.Context, readBack bool) (bool, error) {
			if !readBack {
				return false, nil
			}
			return c.HasEvent(ctx, source, key, d[:])
		})
	return err
}

// AppendQuoted is key as the envelope writes it: a JSON string.
func AppendQuoted(key string) []byte { return pgjson.AppendString(nil, []byte(key)) }

// HasEvent reports whether the newest DedupWindow events of source include
// key on content whose digest starts with digest (any content when nil).
func (c *Client) HasEvent(ctx context.Context, source, key string, digest []byte) (bool, error) {
	return Holds(ctx, c.ReadBack, source, key, digest)
}

// Holds reports whether the events readBack reads of source include key on
// content whose digest starts with digest (any content when nil): the
// HasEvent of the spine's client and of the JetStream one.
func Holds(ctx context.Context, readBack func(context.Context, string, func(Stored)) error, source, key string, digest []byte) (bool, error) {
	found := false
	err := readBack(ctx, source, func(e Stored) {
		if e.Key != key || found {
			return
		}
		if digest == nil {
			found = true
		} else if d, err := e.Digest(); err == nil && bytes.HasPrefix(d[:], digest) {
			found = true
		}
	})
	return found, err
}

// ReadBack calls fn with each of the newest DedupWindow events of source,
// oldest first.
func (c *Client) ReadBack(ctx context.Context, source string, fn func(Stored)) error {
	_, err := c.scanEvents(ctx, source, c.cfg.DedupWindow, fn)
	return err
}

// LastDelivered returns the highest position among the events of systemID
// and keySlot found in the newest DedupWindow events of each source, with
// that event's commit timestamp: where a capture gap begins. It is zero when
// none is found. With before set, only events of transactions committed
// before it count (the slot's position: what precedes the replay).
func (c *Client) LastDelivered(ctx context.Context, systemID, keySlot string, sources []string, before pgoutput.LSN) (envelope.Position, string, error) {
	var last envelope.Position
	var commitTime string
	for _, source := range sources {
		_, err := c.scanEvents(ctx, source, c.cfg.DedupWindow, func(e Stored) {
			sys, slot, pos, ok := envelope.ParseKey(e.Key)
			// A transaction whose commit record starts at before is replayed;
			// a GAP event (sequence 0) at before is not.
			if before != 0 && (pos.CommitLSN > before || pos.CommitLSN == before && pos.Seq > 0) {
				return
			}
			if ok && sys == systemID && slot == keySlot && last.Less(pos) {
				last, commitTime = pos, e.CommitTime
			}
		})
		if err != nil {
			return envelope.Position{}, "", err
		}
	}
	// Events resent after a restart land behind this one: they are late.
	if systemID == c.systemID && keySlot == c.slot && c.maxPresent.Less(last) {
		c.maxPresent = last
	}
	return last, commitTime, nil
}

// maxSettle bounds how long a read-back waits after this client gave up on
// requests in flight (see quietAt): the spine is assumed to append a
// request it received within this long after the client left, or never.
// The timeout of a request bounds it too.
const maxSettle = 5 * time.Second

// abandoned notes that requests in flight were given up on while the spine
// may still be processing them.
func (c *Client) abandoned() {
	c.InFlightUntil(time.Now().Add(c.SettleTime()))
}

// SettleTime is how long the spine may still append a request after its
// sender gave up on it or died (see maxSettle).
func (c *Client) SettleTime() time.Duration { return min(c.cfg.Timeout, maxSettle) }

// InFlightUntil says that requests may still be appended until t: those a
// predecessor on the slot sent before it died, say. Read-backs wait for t.
func (c *Client) InFlightUntil(t time.Time) {
	if t.IsZero() {
		return
	}
	for {
		old := c.quietAt.Load()
		if old >= t.UnixNano() || c.quietAt.CompareAndSwap(old, t.UnixNano()) {
			return
		}
	}
}

// QuietAt is when the requests this client gave up on can no longer be
// appended (in the past when there are none).
func (c *Client) QuietAt() time.Time { return time.Unix(0, c.quietAt.Load()) }

// awaitQuiet waits until requests given up on can no longer be appended.
func (c *Client) awaitQuiet(ctx context.Context) error {
	return backoff.Sleep(ctx, time.Until(time.Unix(0, c.quietAt.Load())))
}

// isTimeout reports a timeout of the request itself (not a dial failure).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
