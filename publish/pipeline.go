package publish

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
)

// Pipelining: several POSTs in flight on one keep-alive HTTP/1.1 connection,
// written in commit order. An HTTP/1.1 server answers pipelined requests in
// the order it received them, and the spine (uvicorn) handles a connection's
// requests one after another, so it appends them in the order they were
// written. One connection, never several: that order is the chain's.
//
// The window is bounded in requests (ClientConfig.MaxInFlight) and in bytes
// (MaxInFlightBytes; one larger event still goes alone). A server or proxy
// that cannot pipeline (it closes the connection with requests pending, or
// answers Connection: close) turns pipelining off for the client's life.

// DefaultMaxInFlight is the default bound of the window, which adapts
// below it to the link (window.go): at audit-stream-py's 2,437 events/s it
// keeps the spine busy across a round trip of up to about 200 ms.
const DefaultMaxInFlight = 1024

// DefaultMaxInFlightBytes bounds the bytes of the requests in flight.
const DefaultMaxInFlightBytes = 16 << 20

// pipeConn is one connection to the spine used for pipelined POSTs.
type pipeConn struct {
	conn *stallConn
	head *headLimit // under br: bounds an answer's status line and headers
	br   *bufio.Reader
	bw   *bufio.Writer
}

// maxAnswerHead bounds what the client reads of one answer before its body
// (net/http's client allows 10 MB by default; the spine's are under 1 KiB):
// a server that sends header lines without end is cut off instead of
// filling memory.
const maxAnswerHead = 1 << 20

// headLimit lets at most left bytes through while on (the head of an
// answer), and any number once off (its body, which is bounded otherwise).
type headLimit struct {
	r    io.Reader
	on   bool
	left int64
}

var errAnswerHead = errors.New("the answer's status line and headers exceed 1 MiB")

func (h *headLimit) Read(p []byte) (int, error) {
	if !h.on {
		return h.r.Read(p)
	}
	if h.left <= 0 {
		return 0, errAnswerHead
	}
	if int64(len(p)) > h.left {
		p = p[:h.left]
	}
	n, err := h.r.Read(p)
	h.left -= int64(n)
	return n, err
}

func (c *Client) dialPipe(ctx context.Context) (*pipeConn, error) {
	if c.pipe != nil && c.pipe.conn.stopped.Load() {
		// A stop that came after its window was read: never reused.
		c.closePipe()
	}
	if c.pipe != nil {
		return c.pipe, nil
	}
	d := net.Dialer{Timeout: c.cfg.Timeout, KeepAlive: 30 * time.Second, Control: limitUnsent}
	host := c.base.Host
	if c.base.Port() == "" {
		if c.base.Scheme == "https" {
			host = net.JoinHostPort(c.base.Hostname(), "443")
		} else {
			host = net.JoinHostPort(c.base.Hostname(), "80")
		}
	}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	conn = rawsock.Wrap(conn)
	if c.base.Scheme == "https" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.tlsConfig != nil {
			cfg = c.tlsConfig.Clone()
		}
		cfg.ServerName = c.base.Hostname()
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		conn = tc
	}
	sc := &stallConn{Conn: conn, timeout: c.cfg.Timeout}
	head := &headLimit{r: sc}
	c.pipe = &pipeConn{conn: sc, head: head, br: bufio.NewReaderSize(head, 64<<10), bw: bufio.NewWriterSize(sc, 64<<10)}
	return c.pipe, nil
}

func (c *Client) closePipe() {
	if c.pipe != nil {
		c.pipe.conn.Close()
		c.pipe = nil
	}
}

// window is the number of requests that may be in flight.
func (c *Client) window() int {
	if c.noPipelining || c.cfg.MaxInFlight <= 1 {
		return 1
	}
	return c.sizer.size()
}

// sendWindow writes the bodies as pipelined POSTs on one connection and
// returns one answer per body, in order. Bodies not written (the connection
// broke first) are answered notSent; bodies written but not answered are
// unknown.
func (c *Client) sendWindow(ctx context.Context, bodies [][]byte, keys []string) []answer {
	answers := make([]answer, len(bodies))
	pc, err := c.dialPipe(ctx)
	if err != nil {
		c.up(false)
		notSentFrom(answers, 0, fmt.Errorf("posting to the spine: %w", err))
		return answers
	}
	pw := newPipeWindow(bodies, c.window(), c.cfg.MaxInFlightBytes)
	// A stop request (the stream broke, the grace period ran out) ends the
	// window at once: nothing more is written, and a blocked read or write
	// returns.
	stopOnCancel := context.AfterFunc(ctx, func() {
		pw.halt()
		pc.conn.stop()
	})
	defer stopOnCancel()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeWindow(pc, pw)
	}()

	w := c.readWindow(pc, pw, keys, answers)
	pw.halt()
	if ctx.Err() != nil {
		w.broken = true // answers may still be on their way: never reuse it
	}
	if !w.broken {
		c.pipeCloses = 0
	}
	c.sizeWindow(pw, w.allVerdicts, w.lastAnswer)
	if w.broken {
		c.closePipe()
	}
	if w.gaveUp {
		c.abandoned() // the next read-back waits for them (see quietAt)
	}
	<-writerDone
	return answers
}

// windowEnd is how reading a window's answers ended.
type windowEnd struct {
	broken      bool      // the connection must not be used again
	gaveUp      bool      // requests were left in flight (see abandoned)
	allVerdicts bool      // every answer read was a 201 or a refusal for good
	lastAnswer  time.Time // of the last 201
}

// readWindow reads the answers to the requests pw writes on pc, in order,
// into answers. After a failure nothing more is written; the requests
// after it are answered unknown or notSent.
func (c *Client) readWindow(pc *pipeConn, pw *pipeWindow, keys []string, answers []answer) windowEnd {
	w := windowEnd{allVerdicts: true}
	for i := range answers {
		start, written, werr := pw.awaitWritten(i)
		if !written {
			notSentFrom(answers, i, fmt.Errorf("posting to the spine: %w", firstErr(werr, errors.New("held back after an earlier request failed"))))
			return w
		}
		if werr != nil { // its own write failed
			answers[i] = answer{verdict: unknown, reason: "connection", err: fmt.Errorf("posting to the spine: %w", redactErr(werr))}
			w.broken = true
			notSentFrom(answers, i+1, errors.New("not sent: the connection broke"))
			return w
		}
		// Each read of the answer has --spine-timeout (stallConn).
		a, closeAfter, saidClose := c.readAnswer(pc, keys[i], start)
		answers[i] = a
		if a.verdict == accepted {
			w.lastAnswer = time.Now()
			c.sizer.latency(w.lastAnswer.Sub(start), w.lastAnswer)
		}
		failed := a.verdict != accepted && a.verdict != rejected
		w.allVerdicts = w.allVerdicts && !failed
		// After a failure nothing more is sent: what is in flight cannot be
		// recalled, but every request held back now is one that cannot
		// land ahead of the failed one.
		pending := pw.answered(i, failed)
		if a.verdict == unknown && a.reason == "connection" && isTimeout(a.err) {
			// Given up by this side (a read timeout, or a stop moving the
			// deadline): the spine may still be working through this
			// request and the ones written after it.
			w.gaveUp = true
		}
		if a.verdict == unknown && a.reason == "connection" || closeAfter {
			w.broken = true
			if pending > 0 && !saidClose && !closedByServer(a.err) {
				// This side ends a connection the spine did not end (an
				// answer it cannot trust, a body it could not read): the
				// spine may still work through the requests written after
				// this one, as it does for a client that gave up waiting.
				w.gaveUp = true
			}
			c.connectionEnded(answers, i, pending, a, saidClose)
			return w
		}
	}
	return w
}

// notSentFrom answers the requests from i on as not sent, for err.
func notSentFrom(answers []answer, i int, err error) {
	for j := i; j < len(answers); j++ {
		answers[j] = answer{verdict: notSent, reason: "connection", err: err}
	}
}

// connectionEnded answers the requests after answer i, which closed the
// connection (or was none), with pending requests written and unanswered:
// their outcome is unknown, and the rest were not sent. A server that
// cannot pipeline closes the connection with requests pending, every time;
// a dropped connection does it once. Twice in a row (or Connection: close)
// is the former, and pipelining is off from then on.
func (c *Client) connectionEnded(answers []answer, i, pending int, a answer, saidClose bool) {
	if (saidClose || isEOF(a.err)) && pending > 0 && !c.noPipelining {
		c.pipeCloses++
		if c.pipeCloses >= 2 || saidClose {
			c.noPipelining = true
			c.log.Warn("the spine (or a proxy in front of it) does not keep pipelined requests; sending one event at a time from now on (set --max-in-flight 1 to say so)")
		}
	}
	for j := i + 1; j < len(answers); j++ {
		if j < pending+i+1 {
			answers[j] = answer{verdict: unknown, reason: "connection", err: errors.New("the connection closed before this request was answered")}
		} else {
			answers[j] = answer{verdict: notSent, reason: "connection", err: errors.New("not sent: the connection closed")}
		}
	}
}

// sizeWindow sizes the next window from this one (window.go): halved when
// an answer was missing or not a verdict, else from its rate.
func (c *Client) sizeWindow(pw *pipeWindow, allVerdicts bool, lastAnswer time.Time) {
	read, first := pw.outcome()
	switch {
	case read < len(pw.bodies) || !allVerdicts:
		c.sizer.failed()
	case pw.limit > 1:
		c.sizer.run(read, lastAnswer.Sub(first), lastAnswer)
	}
	if c.cfg.Hooks.Window != nil && c.sizer.size() != pw.limit {
		c.cfg.Hooks.Window(c.window())
	}
}

// writeWindow writes the bodies as POSTs, each once the window has room,
// until one fails or the window is halted.
func (c *Client) writeWindow(pc *pipeConn, pw *pipeWindow) {
	for i, body := range pw.bodies {
		if !pw.claim(i) {
			return
		}
		req, err := http.NewRequest(http.MethodPost, c.eventsURL, bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
			c.authorize(req)
			err = req.Write(pc.bw) // each piece with its deadline (stallConn)
			if err == nil {
				err = pc.bw.Flush()
			}
		}
		if !pw.wrote(i, err) {
			return
		}
	}
}

// pipeWindow is what one window's writer and reader share: the requests in
// flight (by count and bytes), what was written when, and whether to stop.
type pipeWindow struct {
	mu                sync.Mutex
	cond              *sync.Cond
	bodies            [][]byte
	limit, maxBytes   int // requests and bytes in flight
	inFlight, bytesIn int
	read              int  // answers read
	claimed           int  // bodies the writer has started to write
	stop              bool // the reader gave up, or ctx ended: write no more
	written           []time.Time
	nWritten          int
	werr              error
}

func newPipeWindow(bodies [][]byte, limit, maxBytes int) *pipeWindow {
	pw := &pipeWindow{bodies: bodies, limit: limit, maxBytes: maxBytes, written: make([]time.Time, len(bodies))}
	pw.cond = sync.NewCond(&pw.mu)
	return pw
}

// halt writes no more.
func (pw *pipeWindow) halt() {
	pw.mu.Lock()
	pw.stop = true
	pw.cond.Broadcast()
	pw.mu.Unlock()
}

// claim waits until body i fits in the window (one body always does) and
// counts it in flight; false: the window was halted.
func (pw *pipeWindow) claim(i int) bool {
	size := len(pw.bodies[i])
	pw.mu.Lock()
	defer pw.mu.Unlock()
	for !pw.stop && pw.inFlight > 0 && (pw.inFlight >= pw.limit || pw.bytesIn+size > pw.maxBytes) {
		pw.cond.Wait()
	}
	if pw.stop {
		return false
	}
	pw.inFlight++
	pw.bytesIn += size
	pw.claimed = i + 1
	return true
}

// wrote records the end of body i's write; false: it failed, and the
// window stops.
func (pw *pipeWindow) wrote(i int, err error) bool {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.written[i] = time.Now()
	pw.nWritten = i + 1
	defer pw.cond.Broadcast()
	if err != nil {
		pw.werr, pw.stop = err, true
		return false
	}
	return true
}

// awaitWritten waits for body i while it may still be written (not
// claimed yet and nothing stopped the writer, or claimed and being
// written). written says it was, at start; werr is the write's failure
// (body i's own when written, the one that held it back otherwise).
func (pw *pipeWindow) awaitWritten(i int) (start time.Time, written bool, werr error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	for pw.nWritten <= i && pw.werr == nil && (!pw.stop || pw.claimed > i) {
		pw.cond.Wait()
	}
	if pw.nWritten <= i {
		return time.Time{}, false, pw.werr
	}
	if pw.werr != nil && pw.nWritten == i+1 {
		return pw.written[i], true, pw.werr // the failed write
	}
	return pw.written[i], true, nil
}

// answered counts answer i out of the window (failed: write no more) and
// returns how many written requests are still unanswered.
func (pw *pipeWindow) answered(i int, failed bool) (pending int) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	pw.read++
	pw.inFlight--
	pw.bytesIn -= len(pw.bodies[i])
	if failed {
		pw.stop = true
	}
	pw.cond.Broadcast()
	return pw.nWritten - pw.read
}

// outcome is how many answers were read, and when the first request was
// written.
func (pw *pipeWindow) outcome() (read int, first time.Time) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if len(pw.written) > 0 {
		first = pw.written[0]
	}
	return pw.read, first
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// closedByServer says err is the spine's end of the connection (it closed
// or reset it): it processes nothing more of what was written.
func closedByServer(err error) bool {
	return isEOF(err) || errors.Is(err, syscall.ECONNRESET)
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// readAnswer reads one response and judges it as post does. closeAfter says
// the connection cannot serve another answer; saidClose that the server
// announced it (Connection: close).
func (c *Client) readAnswer(pc *pipeConn, key string, start time.Time) (a answer, closeAfter, saidClose bool) {
	a, closeAfter, saidClose = c.readOne(pc, key, start)
	return a, closeAfter || saidClose, saidClose
}

func (c *Client) readOne(pc *pipeConn, key string, start time.Time) (answer, bool, bool) {
	// What br holds already was read under the previous answer's limit or
	// none: the limit counts from the bytes it reads now, which is close
	// enough for a bound on memory.
	pc.head.on, pc.head.left = true, maxAnswerHead
	resp, err := http.ReadResponse(pc.br, nil)
	pc.head.on = false
	if err != nil {
		c.observe("error", start)
		c.up(false)
		return answer{verdict: unknown, reason: "connection", err: fmt.Errorf("reading the spine's answer: %w", err)}, true, false
	}
	defer resp.Body.Close()
	saidClose := resp.Close
	closeAfter := false
	if resp.StatusCode == http.StatusCreated {
		st, err := confirm(resp.Body, key)
		if err != nil {
			c.observe("201_unconfirmed", start)
			c.up(false)
			return answer{verdict: unknown, reason: "unconfirmed",
				err: fmt.Errorf("the spine answered 201, but not with the stored event: %w", err)}, true, saidClose
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			closeAfter = true
		}
		c.observe("201", start)
		c.up(true)
		if err := c.sawAppend(st); err != nil {
			return answer{verdict: lost, reason: "history_lost", err: err}, closeAfter, saidClose
		}
		return answer{verdict: accepted}, closeAfter, saidClose
	}
	v := classify(resp.StatusCode)
	text, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || rerr != nil {
		closeAfter = true
		if v == rejected {
			c.observe("error", start)
			c.up(false)
			return answer{verdict: unknown, reason: "connection", err: fmt.Errorf("reading the spine's answer: %w", firstErr(rerr, err))}, true, saidClose
		}
	}
	a := c.judge(resp, v, text, start)
	return a, closeAfter, saidClose
}

// PublishBatch delivers evs in order, up to the window in flight on one
// connection, and calls done(i, err) for each, in order: err is nil when the
// spine holds the event (now or already), or a *RejectedError when it
// refused that event for good. It returns an error only when ctx ends (then
// done was called for a prefix of evs).
//
// Exactly once with a window: answers come in order, so every 201 before a
// failure is known. After a failure the outcome of the rest is unknown: the
// agent reads back which keys the spine holds (not only the highest) and
// sends again, in position order, every event that is missing. An event
// sent again after a later one landed is out of commit order in the chain
// and says so (metadata.late).
func (c *Client) PublishBatch(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error {
	if c.systemID == "" {
		return errors.New("BUG: publish.Client used before SetIdentity")
	}
	if c.proxied() {
		return c.publishEach(ctx, evs, done)
	}
	b := &batch{evs: evs, state: make([]settled, len(evs)), errs: make([]error, len(evs)), done: done}
	attempt := 0
	for b.reported < len(evs) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.readBackSources(ctx, b, &attempt); err != nil {
			return err
		}
		idx, bodies, keys := c.nextRun(b)
		b.report(c)
		if len(idx) == 0 {
			continue
		}
		failed, uncertain, progress := c.settle(b, idx, c.sendWindow(ctx, bodies, keys))
		b.report(c)
		if failed == nil || progress {
			// The backoff grows only while nothing gets through: a fault
			// in a window that delivered something is retried promptly.
			attempt = 0
		}
		if failed == nil {
			continue
		}
		if failed.verdict == lost {
			// Nothing more is sent into a spine that lost its history.
			return failed.err
		}
		if uncertain {
			// Read back every pending event's source, not only the one that
			// failed: a request after it may have landed.
			for i := b.reported; i < len(evs); i++ {
				if b.state[i] == unsettled {
					c.checked[evs[i].Source] = false
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := c.wait(ctx, &attempt, failed.reason, failed.retryAfter, failed.err); err != nil {
			return err
		}
	}
	return nil
}

// settled is what became of an event of a batch.
type settled uint8

const (
	unsettled      settled = iota
	present                // accepted now, or held already
	refusedForGood         // rejected: errs says why
)

// batch is PublishBatch's events and what became of each. Outcomes are
// reported (done) in order, as far as every event before is settled.
type batch struct {
	evs      []*envelope.Event
	state    []settled
	errs     []error
	reported int
	done     func(i int, err error)
}

// report calls done for the settled events after the last reported, up to
// the first unsettled one.
func (b *batch) report(c *Client) {
	for b.reported < len(b.evs) && b.state[b.reported] != unsettled {
		switch b.state[b.reported] {
		case present:
			c.MarkHandled(b.evs[b.reported].Pos)
		case refusedForGood:
			// Handled once done keeps it (MarkKeyHandled), not by the
			// mark the events after it raise.
			c.unkept[b.evs[b.reported].Key] = true
		}
		b.done(b.reported, b.errs[b.reported])
		b.reported++
	}
}

// publishEach delivers evs one request at a time with net/http, which
// speaks to an HTTP proxy.
func (c *Client) publishEach(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error {
	for i, ev := range evs {
		err := c.Publish(ctx, ev)
		if err != nil && !IsRejected(err) {
			return err
		}
		done(i, err)
	}
	return nil
}

// readBackSources reads back each pending event's source that was not yet:
// once per session before its first event, and again after an uncertain
// outcome. A failed read-back is waited out and started over; the error is
// ctx's.
func (c *Client) readBackSources(ctx context.Context, b *batch, attempt *int) error {
	for i := b.reported; i < len(b.evs); i++ {
		ev := b.evs[i]
		if b.state[i] != unsettled || c.checked[ev.Source] {
			continue
		}
		err := c.learn(ctx, ev.Source, ev.Pos)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := c.wait(ctx, attempt, readBackReason(err), 0, err); err != nil {
			return err
		}
		i = b.reported - 1 // start over
	}
	return nil
}

// nextRun picks the pending events to send next, in order: a run of
// several windows' worth (every run ends with the pipeline drained, one
// idle round trip). Events the spine already holds are settled instead,
// and an event that will land after a later one is marked late.
func (c *Client) nextRun(b *batch) (idx []int, bodies [][]byte, keys []string) {
	for i := b.reported; i < len(b.evs) && len(idx) < max(8*c.window(), 256); i++ {
		if b.state[i] != unsettled {
			continue
		}
		ev := b.evs[i]
		if c.isHandled(ev) {
			b.state[i] = present
			if c.cfg.Hooks.Skipped != nil {
				c.cfg.Hooks.Skipped(ev)
			}
			continue
		}
		if ev.Pos.Less(c.maxPresent) {
			// It lands after a later one (its earlier attempt failed
			// while the later one was appended): out of commit order in
			// the chain, at its original position.
			ev.MarkLate()
		}
		idx = append(idx, i)
		bodies = append(bodies, ev.Body)
		keys = append(keys, ev.Key)
	}
	return idx, bodies, keys
}

// settle records the answers to the events idx of a run. failed is the
// first answer that settled nothing (nil when none); uncertain: an
// outcome is unknown (its source is read back again); progress: something
// was accepted.
func (c *Client) settle(b *batch, idx []int, answers []answer) (failed *answer, uncertain, progress bool) {
	for j, a := range answers {
		i := idx[j]
		switch a.verdict {
		case accepted:
			progress = true
			b.state[i] = present
			if c.maxPresent.Less(b.evs[i].Pos) {
				c.maxPresent = b.evs[i].Pos
			}
		case rejected:
			b.state[i], b.errs[i] = refusedForGood, a.err
		default:
			if failed == nil {
				failed = &answers[j]
			}
			if a.verdict == unknown {
				uncertain = true
				c.checked[b.evs[i].Source] = false
			}
		}
	}
	return failed, uncertain, progress
}

// ProbePipelining tells whether the spine (and whatever stands in front of
// it) answers two requests written back to back on one connection, in
// order, keeping the connection open: what pipelined delivery needs.
func (c *Client) ProbePipelining(ctx context.Context) (bool, error) {
	pc, err := c.dialPipe(ctx)
	if err != nil {
		return false, fmt.Errorf("connecting to the spine: %w", err)
	}
	defer c.closePipe() // each read and write has --spine-timeout (stallConn)
	for i := 0; i < 2; i++ {
		req, err := http.NewRequest(http.MethodGet, c.base.String()+"/healthz", nil)
		if err != nil {
			return false, err
		}
		c.authorize(req)
		if err := req.Write(pc.bw); err != nil {
			return false, fmt.Errorf("writing to the spine: %w", err)
		}
	}
	if err := pc.bw.Flush(); err != nil {
		return false, fmt.Errorf("writing to the spine: %w", err)
	}
	for i := 0; i < 2; i++ {
		resp, err := http.ReadResponse(pc.br, nil)
		if err != nil {
			return false, nil // closed with a request pending
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("the spine answered /healthz with HTTP %d", resp.StatusCode)
		}
		if resp.Close && i == 0 {
			return false, nil
		}
	}
	return true, nil
}

// proxied says requests to the spine go through an HTTP proxy (the
// environment's HTTP_PROXY / HTTPS_PROXY): pipelined connections are direct,
// so deliveries then use net/http, one at a time.
func (c *Client) proxied() bool {
	t, ok := c.http.Transport.(*http.Transport)
	if !ok || t.Proxy == nil {
		return false
	}
	req, err := http.NewRequest(http.MethodPost, c.eventsURL, nil)
	if err != nil {
		return false
	}
	u, err := t.Proxy(req)
	return err == nil && u != nil
}
