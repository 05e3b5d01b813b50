package natsjs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// Client delivers events into one JetStream stream, exactly once and in
// commit order (see the package documentation). It implements what the
// agent needs of a destination: publish.Sink, agent.Spine, the batched
// delivery and the trail's read-back. A Client is used by one goroutine.
type Client struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger
	asyncErr atomic.Pointer[error]
	want     Want

	stream jetstream.Stream // nil until the stream was found or made

	systemID, slot string
	// synced: head, present and copies were read from the stream since
	// the last failure.
	synced bool
	// head is the stream's last message and the hash the next event links
	// to (the last chained message's).
	head Link
	// created and highest identify the history seen: a stream made again,
	// or one whose last sequence went back, lost it.
	created time.Time
	highest uint64
	// mark is the highest position delivered by this process.
	mark envelope.Position
	// present holds this identity's keys read back, with the digests of
	// their copies; handled the keys handled otherwise (dead letters).
	present map[string][]storedCopy
	handled map[string]bool
	// sendFailed: the last window failed; the destination is reported up
	// again only on an acknowledgement.
	sendFailed bool
	// preempted holds the keys whose Nats-Msg-Id another writer took: the
	// event goes under a message ID of its own (see msgID).
	preempted map[string]uint64
}

// Connect starts the connection (in the background: an unreachable
// cluster is waited for) and returns the client. Nothing is read or
// written before the first delivery.
func Connect(cfg Config) (*Client, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, present: map[string][]storedCopy{}, handled: map[string]bool{},
		preempted: map[string]uint64{}}
	opts, err := cfg.options(&c.asyncErr)
	if err != nil {
		return nil, err
	}
	c.nc, err = nats.Connect(strings.Join(cfg.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", redactURLs(cfg.URLs), err)
	}
	c.js, err = jetstream.New(c.nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight+1),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout))
	if err != nil {
		c.nc.Close()
		return nil, fmt.Errorf("starting JetStream: %w", err)
	}
	c.want = Want{Stream: cfg.Stream, Subject: cfg.Subject, Replicas: cfg.Replicas, Duplicates: cfg.Duplicates}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() { c.nc.Close() }

// Conn is the NATS connection (tests and doctor).
func (c *Client) Conn() *nats.Conn { return c.nc }

// SetIdentity tells the client which idempotency keys are its own. The
// agent calls it at the start of every replication session; the stream is
// read back again before the next delivery.
func (c *Client) SetIdentity(systemID, slot string) {
	if c.systemID != systemID || c.slot != slot {
		c.mark = envelope.Position{}
		c.handled = map[string]bool{}
	}
	c.systemID, c.slot = systemID, slot
	c.synced = false
}

// MarkKeyHandled records that the event with key is handled otherwise.
func (c *Client) MarkKeyHandled(key string) { c.handled[key] = true }

// MarkFor is the highest position this process delivered for systemID and
// slot (zero for another identity).
func (c *Client) MarkFor(systemID, slot string) envelope.Position {
	if c.systemID != systemID || c.slot != slot {
		return envelope.Position{}
	}
	return c.mark
}

// Publish delivers one event (see PublishBatch).
func (c *Client) Publish(ctx context.Context, ev *envelope.Event) error {
	var result error
	if err := c.PublishBatch(ctx, []*envelope.Event{ev}, func(_ int, err error) { result = err }); err != nil {
		return err
	}
	return result
}

// PublishBatch delivers evs in order, with up to Config.MaxInFlight
// messages awaiting their acknowledgement, and calls done once per event,
// in order, when the stream holds it (or held it already). It waits out
// outages itself until ctx ends. It returns an error the operator must act
// on: a stream weaker than the trail needs, an event over a size limit, or
// a stream that lost its history (publish.HistoryLostError).
func (c *Client) PublishBatch(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error {
	if c.systemID == "" {
		return errors.New("BUG: natsjs.Client used before SetIdentity")
	}
	attempt := 0
	for i := 0; i < len(evs); {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !c.synced {
			if err := c.sync(ctx); err != nil {
				if mustStop(err) {
					return err
				}
				if err := c.wait(ctx, &attempt, "read_back", err); err != nil {
					return err
				}
				continue
			}
		}
		if c.isHandled(evs[i]) {
			if c.cfg.Hooks.Skipped != nil {
				c.cfg.Hooks.Skipped(evs[i])
			}
			done(i, nil)
			i++
			continue
		}
		n, err := c.window(ctx, evs[i:], func(k int) { done(i+k, nil) })
		i += n
		if err == nil {
			attempt = 0
			continue
		}
		if mustStop(err) || ctx.Err() != nil {
			return err
		}
		c.synced = false
		if err := c.wait(ctx, &attempt, reasonOf(err), err); err != nil {
			return err
		}
	}
	return nil
}

// window sends the events from evs[0] on, each with the sequence it must
// be stored at, keeping up to Config.MaxInFlight messages (and
// MaxInFlightBytes) awaiting their acknowledgement: as each is settled, in
// order, the next is sent. It stops at the first failure, or before an
// event already handled (PublishBatch skips it). After a failure it reads
// the stream to learn which of the messages sent it holds. It returns how
// many events were settled.
func (c *Client) window(ctx context.Context, evs []*envelope.Event, settled func(k int)) (int, error) {
	w := &jsWindow{evs: evs, at: c.head}
	start := time.Now()
	for {
		c.fill(w)
		if w.n == len(w.msgs) {
			break
		}
		more, err := c.settleOldest(ctx, w)
		if err != nil {
			return w.n, err
		}
		if !more {
			break
		}
		settled(w.n - 1)
	}
	if c.cfg.Hooks.Window != nil {
		c.cfg.Hooks.Window(min(len(w.msgs), c.cfg.MaxInFlight))
	}
	c.observe(w.failure, start)
	if w.failure == nil {
		return w.n, nil
	}
	// The acknowledgements still due are not awaited: whatever of the
	// rest the stream holds, in order, was stored, and the rest is sent
	// again with the same sequences, so a late store of an earlier attempt
	// is the same message at the same place.
	n := w.n
	got, err := c.resolve(ctx, w.evs[n:len(w.msgs)], w.msgs[n:])
	for k := range got {
		c.accepted(w.evs[n+k], w.msgs[n+k])
		settled(n + k)
	}
	if err != nil {
		return n + got, errors.Join(w.failure, err)
	}
	return n + got, w.failure
}

// jsWindow is a window of messages sent and awaiting their
// acknowledgement: msgs[n:] (evs' first len(msgs) events).
type jsWindow struct {
	evs      []*envelope.Event
	msgs     []Message
	futures  []jetstream.PubAckFuture
	at       Link // where the next message goes
	inflight int  // bytes awaiting acknowledgement
	n        int  // settled
	failure  error
}

// fill sends the next events while nothing failed and the window has
// room. It ends evs before an event already handled (PublishBatch skips
// it) and before one too large to send (it goes first in the next window,
// and stops there).
func (c *Client) fill(w *jsWindow) {
	for w.failure == nil && len(w.msgs) < len(w.evs) && len(w.msgs)-w.n < c.cfg.MaxInFlight &&
		(len(w.msgs) == w.n || w.inflight < c.cfg.MaxInFlightBytes) {
		k := len(w.msgs)
		ev := w.evs[k]
		if k > 0 && c.isHandled(ev) {
			w.evs = w.evs[:k]
			return
		}
		m := Build(ev, w.at)
		if err := c.checkSize(ev, len(m.Data)); err != nil {
			if k == w.n {
				w.failure = err // nothing before it is in flight
			}
			w.evs = w.evs[:k]
			return
		}
		f, err := c.js.PublishMsgAsync(&nats.Msg{Subject: c.cfg.Subject, Data: m.Data},
			jetstream.WithMsgID(c.msgID(ev)), jetstream.WithExpectStream(c.cfg.Stream),
			jetstream.WithExpectLastSequence(w.at.Seq), jetstream.WithStallWait(c.cfg.AckTimeout))
		if err != nil {
			w.failure = fmt.Errorf("sending to NATS: %w", err)
			return
		}
		w.msgs, w.futures = append(w.msgs, m), append(w.futures, f)
		w.at = Link{Seq: m.Seq, Hash: m.Hash}
		w.inflight += len(m.Data)
	}
}

// settleOldest awaits the oldest message's acknowledgement and settles it:
// more is false when it failed, or a send did (w.failure says why; the
// rest's fate is read back); err is ctx's.
func (c *Client) settleOldest(ctx context.Context, w *jsWindow) (more bool, err error) {
	n := w.n
	var ack *jetstream.PubAck
	var aerr error
	select {
	case ack = <-w.futures[n].Ok():
	case aerr = <-w.futures[n].Err():
	case <-ctx.Done():
		return false, ctx.Err()
	}
	if w.failure != nil {
		return false, nil
	}
	switch {
	case aerr != nil:
		w.failure = c.explain(aerr)
	case ack.Duplicate:
		w.failure = c.duplicate(ctx, w.evs[n], w.msgs[n], ack.Sequence)
	case ack.Stream != c.cfg.Stream || ack.Sequence != w.msgs[n].Seq:
		w.failure = fmt.Errorf("stream %s acknowledged message %d as %s sequence %d", c.cfg.Stream, w.msgs[n].Seq, ack.Stream, ack.Sequence)
	}
	if w.failure != nil {
		return false, nil
	}
	c.accepted(w.evs[n], w.msgs[n])
	w.inflight -= len(w.msgs[n].Data)
	w.futures[n], w.msgs[n].Data = nil, nil
	w.n++
	return true, nil
}

// duplicate judges an acknowledgement saying the stream already holds a
// message under m's Nats-Msg-Id, at seq: ours when it is m at m's
// sequence (an earlier attempt landed); else another writer took the ID
// first, and the event goes again under an ID of its own, naming it.
func (c *Client) duplicate(ctx context.Context, ev *envelope.Event, m Message, seq uint64) error {
	if seq == m.Seq {
		held, err := c.holds(ctx, m)
		if err != nil {
			return err
		}
		if held {
			return nil
		}
	}
	c.preempt(ev, seq)
	return errDuplicate
}

// resolve reads which of msgs the stream holds after a failure: those at
// their sequence with their bytes, from the first on, are stored. A message
// that is not ours where ours was to go is another writer's (reported); the
// next window links to it after a sync.
func (c *Client) resolve(ctx context.Context, evs []*envelope.Event, msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	info, err := c.info(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for k, m := range msgs {
		if m.Seq > info.State.LastSeq {
			break
		}
		held, err := c.holds(ctx, m)
		if err != nil {
			return n, err
		}
		if !held {
			c.foreign(m.Seq, evs[k])
			break
		}
		n++
	}
	return n, nil
}

// holds reports whether the stream stores m at its sequence.
func (c *Client) holds(ctx context.Context, m Message) (bool, error) {
	s, err := c.openStream(ctx)
	if err != nil {
		return false, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	raw, err := s.GetMsg(actx, m.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading message %d back: %w", m.Seq, err)
	}
	return raw.Subject == c.cfg.Subject && bytes.Equal(raw.Data, m.Data), nil
}

// accepted records that the stream holds ev as m.
func (c *Client) accepted(ev *envelope.Event, m Message) {
	c.head = Link{Seq: m.Seq, Hash: m.Hash}
	c.highest = max(c.highest, m.Seq)
	if trail.IsTrailKey(ev.Key) {
		c.present[ev.Key] = append(c.present[ev.Key], storedCopy{seq: m.Seq, digest: ev.Digest()})
	} else if c.mark.Less(ev.Pos) {
		c.mark = ev.Pos
	}
}

// msgID is the event's Nats-Msg-Id: its idempotency key, or, when another
// writer took that ID first, the key and the pre-empting message's
// sequence.
func (c *Client) msgID(ev *envelope.Event) string {
	if seq, ok := c.preempted[ev.Key]; ok {
		return ev.Key + "/after/" + strconv.FormatUint(seq, 10)
	}
	return ev.Key
}

// preempt records that the message stored at seq under ev's Nats-Msg-Id is
// another writer's: ev is delivered anyway, naming it
// (metadata.supersedes_event_id), under an ID of its own.
func (c *Client) preempt(ev *envelope.Event, seq uint64) {
	if _, ok := c.preempted[ev.Key]; ok {
		return
	}
	c.preempted[ev.Key] = seq
	c.log.Error("forged message in the stream: another writer stored a message under one of pgaudit-cdc's Nats-Msg-Ids; the real event is delivered now, naming it (metadata.supersedes_event_id)",
		"stream", c.cfg.Stream, "key", ev.Key, "forged_seq", seq,
		"fix", fmt.Sprintf("allow only pgaudit-cdc's credentials to publish to %s", c.cfg.Subject))
	if c.cfg.Hooks.Forgery != nil {
		c.cfg.Hooks.Forgery(ev, int64(seq))
	}
	ev.Supersedes = int64(seq)
	ev.Finish()
}

// foreign reports a message another writer stored where ev was to go.
func (c *Client) foreign(seq uint64, ev *envelope.Event) {
	c.log.Error("another writer stored a message in pgaudit-cdc's stream; the trail goes on after it, and verify reports it",
		"stream", c.cfg.Stream, "subject", c.cfg.Subject, "seq", seq, "next_key", ev.Key,
		"fix", fmt.Sprintf("allow only pgaudit-cdc's credentials to publish to %s", c.cfg.Subject))
	if c.cfg.Hooks.Forgery != nil {
		c.cfg.Hooks.Forgery(ev, int64(seq))
	}
}

// isHandled says whether ev is in the stream already (as the agent would
// send it) or handled otherwise.
func (c *Client) isHandled(ev *envelope.Event) bool {
	// A KEY or SEAL event stands outside the positions of changes: it is
	// looked for by key and content only.
	if !trail.IsTrailKey(ev.Key) && !c.mark.Less(ev.Pos) || c.handled[ev.Key] {
		return true
	}
	copies, ok := c.present[ev.Key]
	if !ok {
		return false
	}
	d := ev.Digest()
	for _, cp := range copies {
		if cp.digest == d {
			return true
		}
	}
	// Another writer's message under this key: ev is delivered, naming it.
	c.preempt(ev, copies[len(copies)-1].seq)
	return false
}

// storedCopy is a message read back under one of the agent's keys.
type storedCopy struct {
	seq    uint64
	digest [32]byte
}

// checkSize refuses an event no server or stream would take, before
// anything after it can be confirmed.
func (c *Client) checkSize(ev *envelope.Event, n int) error {
	const headerRoom = 512
	limit, what := c.nc.MaxPayload(), "the NATS servers' max_payload"
	fix := "raise max_payload in every server's configuration (at most 64MB) and reload them"
	if c.stream != nil {
		if ms := c.stream.CachedInfo().Config.MaxMsgSize; ms > 0 && (limit <= 0 || int64(ms) < limit) {
			limit, what, fix = int64(ms), fmt.Sprintf("stream %s's max_msg_size", c.cfg.Stream), "raise it (nats stream edit --max-msg-size)"
		}
	}
	if limit > 0 && int64(n+headerRoom) > limit {
		return &SizeError{Key: ev.Key, Table: ev.Table, Operation: ev.Operation, Size: n, Limit: limit, What: what, Fix: fix}
	}
	return nil
}

func (c *Client) observe(failure error, start time.Time) {
	if c.cfg.Hooks.Post != nil {
		outcome := "ack"
		if failure != nil {
			outcome = reasonOf(failure)
		}
		c.cfg.Hooks.Post(outcome, time.Since(start))
	}
	c.sendFailed = failure != nil
	c.up(failure == nil)
}

func (c *Client) up(up bool) {
	if c.cfg.Hooks.SpineUp != nil {
		c.cfg.Hooks.SpineUp(up)
	}
}

// wait logs the failure and sleeps before the next attempt.
func (c *Client) wait(ctx context.Context, attempt *int, reason string, cause error) error {
	c.up(false)
	d := backoff.Delay(*attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
	*attempt++
	if c.cfg.Hooks.Retry != nil {
		c.cfg.Hooks.Retry(reason, d)
	}
	c.log.Warn("delivery to JetStream failed; events wait in the slot, and what the stream holds is read back before anything is sent again",
		"stream", c.cfg.Stream, "reason", reason, "err", cause, "retry_in", d.Round(time.Millisecond))
	return backoff.Sleep(ctx, d)
}

// Redeliver sends ev, a dead letter kept while the trail went to the spine
// and read back with envelope.ParseKept, into the stream: marked
// redelivered (it lands after newer events), and not sent when the stream
// holds it already with this content.
func (c *Client) Redeliver(ctx context.Context, _ /* source */ string, ev *envelope.Event) error {
	sys, slot, pos, ok := envelope.ParseKey(ev.Key)
	if !ok {
		sys, slot = "redeliver", "redeliver" // a KEY or SEAL event: found by key and content
	}
	c.SetIdentity(sys, slot)
	ev.Pos = pos
	ev.MarkRedelivered()
	return c.Publish(ctx, ev)
}
