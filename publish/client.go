package publish

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
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
	// Timeout bounds one HTTP request (default 30s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries (defaults
	// 200ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// DedupWindow is the most events of one source read back from the spine
	// to find what this agent already delivered (default 10000, at most
	// 100000, the spine's limit).
	DedupWindow int
	Logger      *slog.Logger
	Hooks       Hooks
}

// Hooks let the caller observe delivery (metrics). Nil fields are skipped.
type Hooks struct {
	// Post is called after every POST with its outcome: "201", "4xx", "5xx",
	// "429", "408" or "error", and its duration.
	Post func(outcome string, d time.Duration)
	// Retry is called before each wait, with the reason.
	Retry func(reason string, wait time.Duration)
	// Skipped is called for an event found already in the spine.
	Skipped func(ev *decode.Event)
	// SpineUp reports whether the last request reached the spine.
	SpineUp func(up bool)
}

// Client delivers events to the audit-stream spine one at a time, exactly
// once per idempotency key as long as the spine's history can be read back.
//
// The spine has no de-duplication, so the client keeps a high-water mark: the
// highest position of this agent's events known to be in the spine (or
// otherwise handled). Events are delivered strictly in position order, so
// every event at or below the mark is already handled and is skipped. The mark
// is learnt from the spine (GET /events?source=...) the first time a source is
// seen and again after any POST whose outcome is unknown, instead of
// re-sending blindly. A Client is used by one goroutine.
type Client struct {
	cfg      ClientConfig
	base     *url.URL
	http     *http.Client
	log      *slog.Logger
	systemID string
	slot     string
	// eventsURL is POST /events, built once.
	eventsURL string

	mark    decode.Position
	checked map[string]bool
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
	transport.MaxIdleConnsPerHost = 4
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
	return &Client{
		cfg:       cfg,
		base:      u,
		eventsURL: u.String() + "/events",
		http:      &http.Client{Transport: transport, Timeout: cfg.Timeout},
		log:       cfg.Logger,
		checked:   map[string]bool{},
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
		c.mark = decode.Position{}
	}
	c.checked = map[string]bool{}
	c.systemID, c.slot = systemID, slot
}

// MarkHandled raises the high-water mark: events at or before p are handled
// (delivered, or kept as dead letters) and will be skipped.
func (c *Client) MarkHandled(p decode.Position) {
	if c.mark.Less(p) {
		c.mark = p
	}
}

// Mark returns the high-water mark.
func (c *Client) Mark() decode.Position { return c.mark }

// RejectedError is a refusal by the spine that retrying will not change: a
// 4xx other than 408 and 429.
type RejectedError struct {
	StatusCode int
	Body       string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("the spine refused the event with HTTP %d: %s", e.StatusCode, truncate(e.Body, 500))
}

// IsRejected reports whether err is (or wraps) a RejectedError.
func IsRejected(err error) bool {
	var r *RejectedError
	return errors.As(err, &r)
}

// Publish delivers ev and returns nil once the spine holds it (or held it
// already). It retries transient failures with capped exponential backoff
// and jitter until ctx ends; it returns a *RejectedError for refusals.
func (c *Client) Publish(ctx context.Context, ev *decode.Event) error {
	if c.systemID == "" {
		return errors.New("BUG: publish.Client used before SetIdentity")
	}
	attempt := 0
	uncertain := !c.checked[ev.Source]
	for {
		if uncertain {
			if err := c.learn(ctx, ev.Source); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := c.wait(ctx, &attempt, "read_back", 0, err); err != nil {
					return err
				}
				continue
			}
			uncertain = false
		}
		if !c.mark.Less(ev.Pos) {
			if c.cfg.Hooks.Skipped != nil {
				c.cfg.Hooks.Skipped(ev)
			}
			return nil
		}
		status, header, body, err := c.post(ctx, ev.Body)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A request that may have reached the spine is checked before it
			// is sent again; one that never left (dial failure) is not.
			uncertain = !isDialError(err)
			if err := c.wait(ctx, &attempt, "connection", 0, err); err != nil {
				return err
			}
		case status == http.StatusCreated:
			c.mark = ev.Pos
			return nil
		case status == http.StatusTooManyRequests:
			if err := c.wait(ctx, &attempt, "429", retryAfter(header), fmt.Errorf("HTTP 429")); err != nil {
				return err
			}
		case status == http.StatusRequestTimeout || status >= 500:
			// The append may have happened before the failure was reported.
			uncertain = true
			if err := c.wait(ctx, &attempt, statusClass(status), retryAfter(header), fmt.Errorf("HTTP %d: %s", status, truncate(body, 200))); err != nil {
				return err
			}
		case status >= 400:
			return &RejectedError{StatusCode: status, Body: body}
		default:
			uncertain = true
			if err := c.wait(ctx, &attempt, "unexpected", 0, fmt.Errorf("unexpected HTTP %d: %s", status, truncate(body, 200))); err != nil {
				return err
			}
		}
	}
}

func (c *Client) post(ctx context.Context, body []byte) (int, http.Header, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.eventsURL, bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	c.authorize(req)
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.observe("error", start)
		c.up(false)
		return 0, nil, "", fmt.Errorf("posting to the spine: %w", redactErr(err))
	}
	defer resp.Body.Close()
	c.up(true)
	if resp.StatusCode == http.StatusCreated {
		// The answer echoes the stored event, as large as ours: only the
		// status matters. Draining it (without keeping it) lets the
		// connection serve the next request; the event is accepted either way.
		_, _ = io.Copy(io.Discard, resp.Body)
		c.observe("201", start)
		return resp.StatusCode, resp.Header, "", nil
	}
	text, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		c.observe("error", start)
		return 0, nil, "", fmt.Errorf("reading the spine's answer: %w", err)
	}
	c.observe(statusClass(resp.StatusCode), start)
	return resp.StatusCode, resp.Header, string(text), nil
}

func (c *Client) observe(outcome string, start time.Time) {
	if c.cfg.Hooks.Post != nil {
		c.cfg.Hooks.Post(outcome, time.Since(start))
	}
}

func (c *Client) up(up bool) {
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
func (c *Client) learn(ctx context.Context, source string) error {
	for limit := 10; ; limit *= 10 {
		if limit > c.cfg.DedupWindow {
			limit = c.cfg.DedupWindow
		}
		n, found, err := c.readBack(ctx, source, limit)
		if err != nil {
			return err
		}
		if found || n < limit || limit >= c.cfg.DedupWindow {
			c.checked[source] = true
			return nil
		}
	}
}

func (c *Client) readBack(ctx context.Context, source string, limit int) (int, bool, error) {
	found := false
	n, err := c.scanEvents(ctx, source, limit, func(key string, redelivered bool) {
		if redelivered {
			return
		}
		sys, slot, pos, ok := decode.ParseKey(key)
		if !ok || sys != c.systemID || slot != c.slot {
			return
		}
		found = true
		c.MarkHandled(pos)
	})
	return n, found, err
}

// scanEvents reads GET /events?source=…&limit=… and calls fn with each
// event's idempotency key, one event at a time: events can be large (a 20 MB
// row), so the answer is never held whole.
func (c *Client) scanEvents(ctx context.Context, source string, limit int, fn func(key string, redelivered bool)) (int, error) {
	q := url.Values{"source": {source}, "limit": {strconv.Itoa(limit)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+"/events?"+q.Encode(), nil)
	if err != nil {
		return 0, fmt.Errorf("building request: %w", err)
	}
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		c.up(false)
		return 0, fmt.Errorf("reading back events of source %q: %w", source, redactErr(err))
	}
	defer resp.Body.Close()
	c.up(true)
	if resp.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("reading back events of source %q: HTTP %d: %s", source, resp.StatusCode, truncate(string(text), 200))
	}
	dec := json.NewDecoder(resp.Body)
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return 0, fmt.Errorf("reading back events of source %q: the answer is not a JSON array (%v)", source, err)
	}
	n := 0
	for dec.More() {
		var e struct {
			Payload struct {
				Metadata struct {
					Key         string `json:"idempotency_key"`
					Redelivered bool   `json:"redelivered"`
				} `json:"metadata"`
			} `json:"payload"`
		}
		if err := dec.Decode(&e); err != nil {
			return n, fmt.Errorf("reading back events of source %q: %w", source, err)
		}
		n++
		fn(e.Payload.Metadata.Key, e.Payload.Metadata.Redelivered)
	}
	return n, nil
}

// wait sleeps before the next attempt: capped exponential backoff with full
// jitter, or the server's Retry-After when it asked for longer.
func (c *Client) wait(ctx context.Context, attempt *int, reason string, retryAfter time.Duration, cause error) error {
	d := Backoff(*attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
	if retryAfter > d {
		d = retryAfter
	}
	*attempt++
	if c.cfg.Hooks.Retry != nil {
		c.cfg.Hooks.Retry(reason, d)
	}
	level := slog.LevelWarn
	if *attempt > 1 && *attempt%10 != 0 {
		level = slog.LevelDebug // one line per ten retries keeps a long outage readable
	}
	c.log.Log(ctx, level, "spine delivery failed; retrying", "reason", reason, "attempt", *attempt, "wait", d.Round(time.Millisecond), "err", cause)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Backoff is the delay before retry number attempt (0-based): a random
// duration in [d/2, d] where d = min·2^attempt, capped at max.
func Backoff(attempt int, minD, maxD time.Duration) time.Duration {
	d := minD
	for i := 0; i < attempt && d < maxD; i++ {
		d *= 2
	}
	if d > maxD {
		d = maxD
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
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
	default:
		return "other"
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Kinds returns the event kinds the spine advertises in its OpenAPI schema
// (components.schemas.EventKind.enum).
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
		return nil, fmt.Errorf("reading the spine's kinds: GET /openapi.json answered HTTP %d", resp.StatusCode)
	}
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Enum []string `json:"enum"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return nil, fmt.Errorf("reading the spine's kinds: %w", err)
	}
	kinds := doc.Components.Schemas["EventKind"].Enum
	if len(kinds) == 0 {
		return nil, errors.New("reading the spine's kinds: /openapi.json has no EventKind enum")
	}
	return kinds, nil
}

// Health checks GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		c.up(false)
		return fmt.Errorf("the spine at %s is unreachable: %w", c.base.Redacted(), redactErr(err))
	}
	resp.Body.Close()
	c.up(true)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the spine at %s answered /healthz with HTTP %d", c.base.Redacted(), resp.StatusCode)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
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

// Redeliver sends one envelope again outside the ordered stream (a dead
// letter being retried). It first looks for key in the spine, and after an
// uncertain failure looks again before re-sending, so the envelope is in the
// chain exactly once. It returns a *RejectedError if the spine refuses it
// again.
func (c *Client) Redeliver(ctx context.Context, source, key string, body []byte) error {
	body = MarkRedelivered(body)
	attempt := 0
	check := true
	for {
		if check {
			found, err := c.hasKey(ctx, source, key)
			if err != nil {
				if err := c.wait(ctx, &attempt, "read_back", 0, err); err != nil {
					return err
				}
				continue
			}
			if found {
				return nil
			}
			check = false
		}
		status, header, text, err := c.post(ctx, body)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			check = !isDialError(err)
			if err := c.wait(ctx, &attempt, "connection", 0, err); err != nil {
				return err
			}
		case status == http.StatusCreated:
			return nil
		case status == http.StatusTooManyRequests:
			if err := c.wait(ctx, &attempt, "429", retryAfter(header), fmt.Errorf("HTTP 429")); err != nil {
				return err
			}
		case status == http.StatusRequestTimeout || status >= 500 || status < 400:
			check = true
			if err := c.wait(ctx, &attempt, statusClass(status), retryAfter(header), fmt.Errorf("HTTP %d", status)); err != nil {
				return err
			}
		default:
			return &RejectedError{StatusCode: status, Body: text}
		}
	}
}

// MarkRedelivered adds "redelivered": true to an envelope's
// payload.metadata. Redelivered events sit out of commit order in the chain,
// so the read-back that learns the high-water mark must ignore them. The
// envelope's own metadata is always its last "metadata" object.
func MarkRedelivered(body []byte) []byte {
	const marker = `"metadata":{"commit_lsn":`
	i := bytes.LastIndex(body, []byte(marker))
	if i < 0 {
		return body
	}
	at := i + len(`"metadata":{`)
	out := make([]byte, 0, len(body)+20)
	out = append(out, body[:at]...)
	out = append(out, `"redelivered":true,`...)
	return append(out, body[at:]...)
}

// hasKey reports whether the newest DedupWindow events of source include key.
func (c *Client) hasKey(ctx context.Context, source, key string) (bool, error) {
	found := false
	_, err := c.scanEvents(ctx, source, c.cfg.DedupWindow, func(k string, _ bool) {
		if k == key {
			found = true
		}
	})
	return found, err
}
