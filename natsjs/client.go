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
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
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
	var msgs []Message
	var futures []jetstream.PubAckFuture
	at, inflight := c.head, 0
	n := 0 // settled; msgs[n:] await their acknowledgement
	var failure error
	start := time.Now()
	for {
		// Fill the window while nothing failed.
		for failure == nil && len(msgs) < len(evs) && len(msgs)-n < c.cfg.MaxInFlight &&
			(len(msgs) == n || inflight < c.cfg.MaxInFlightBytes) {
			k := len(msgs)
			ev := evs[k]
			if k > 0 && c.isHandled(ev) {
				evs = evs[:k] // PublishBatch skips it, then goes on
				break
			}
			m := Build(ev, at)
			if err := c.checkSize(ev, len(m.Data)); err != nil {
				if k == n {
					failure = err // nothing before it is in flight
				}
				evs = evs[:k] // it goes first in the next window, and stops there
				break
			}
			f, err := c.js.PublishMsgAsync(&nats.Msg{Subject: c.cfg.Subject, Data: m.Data},
				jetstream.WithMsgID(c.msgID(ev)), jetstream.WithExpectStream(c.cfg.Stream),
				jetstream.WithExpectLastSequence(at.Seq), jetstream.WithStallWait(c.cfg.AckTimeout))
			if err != nil {
				failure = fmt.Errorf("sending to NATS: %w", err)
				break
			}
			msgs, futures = append(msgs, m), append(futures, f)
			at = Link{Seq: m.Seq, Hash: m.Hash}
			inflight += len(m.Data)
		}
		if n == len(msgs) {
			break
		}
		// Settle the oldest message in flight.
		var ack *jetstream.PubAck
		var err error
		select {
		case ack = <-futures[n].Ok():
		case err = <-futures[n].Err():
		case <-ctx.Done():
			return n, ctx.Err()
		}
		if failure != nil {
			break // a send failed: the rest's fate is read back below
		}
		switch {
		case err != nil:
			failure = c.explain(err)
		case ack.Duplicate:
			failure = c.duplicate(ctx, evs[n], msgs[n], ack.Sequence)
		case ack.Stream != c.cfg.Stream || ack.Sequence != msgs[n].Seq:
			failure = fmt.Errorf("stream %s acknowledged message %d as %s sequence %d", c.cfg.Stream, msgs[n].Seq, ack.Stream, ack.Sequence)
		}
		if failure != nil {
			break // the rest's fate is read back below
		}
		c.accepted(evs[n], msgs[n])
		settled(n)
		inflight -= len(msgs[n].Data)
		futures[n], msgs[n].Data = nil, nil
		n++
	}
	if c.cfg.Hooks.Window != nil {
		c.cfg.Hooks.Window(min(len(msgs), c.cfg.MaxInFlight))
	}
	c.observe(failure, start)
	if failure == nil {
		return n, nil
	}
	// The acknowledgements still due are not awaited: whatever of the
	// rest the stream holds, in order, was stored, and the rest is sent
	// again with the same sequences, so a late store of an earlier attempt
	// is the same message at the same place.
	got, err := c.resolve(ctx, evs[n:len(msgs)], msgs[n:])
	for k := range got {
		c.accepted(evs[n+k], msgs[n+k])
		settled(n + k)
	}
	if err != nil {
		failure = errors.Join(failure, err)
	}
	return n + got, failure
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

// errDuplicate: an acknowledgement named a message stored earlier under
// the same ID that is not the one sent.
var errDuplicate = errors.New("the stream holds another message under this event's Nats-Msg-Id")

// resolve reads which of msgs the stream holds after a failure: those at
// their sequence with their bytes, from the first on, are stored. A message
// that is not ours where ours was to go is another writer's (reported); the
// next window links to it after a sync.
func (c *Client) resolve(ctx context.Context, evs []*envelope.Event, msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	s, err := c.openStream(ctx)
	if err != nil {
		return 0, err
	}
	info, err := c.info(ctx, s)
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

// SizeError is an event larger than the destination takes. Nothing after
// it is confirmed until the limit is raised.
type SizeError struct {
	Key, Table, Operation string
	Size                  int
	Limit                 int64
	What, Fix             string
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("the %s event %s on %s is %d bytes, over %s of %d bytes: %s; capture waits at this event, and nothing after it is confirmed until then",
		e.Operation, e.Key, e.Table, e.Size, e.What, e.Limit, e.Fix)
}

// StreamError is a stream weaker than the trail needs.
type StreamError struct {
	Stream   string
	Problems []Problem
}

func (e *StreamError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return fmt.Sprintf("stream %s is weaker than the audit trail needs, so pgaudit-cdc does not write to it: %s", e.Stream, strings.Join(parts, "; "))
}

// mustStop: errors the operator must act on; every other failure is an
// outage, waited out.
func mustStop(err error) bool {
	var se *SizeError
	var st *StreamError
	return errors.As(err, &se) || errors.As(err, &st) || publish.IsHistoryLost(err)
}

// explain turns a publish failure into one sentence, with what the server
// said asynchronously (a permissions violation comes that way).
func (c *Client) explain(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
		return fmt.Errorf("stream %s refused a message as over its size limit (%w): raise max_msg_size and max_payload", c.cfg.Stream, err)
	}
	if errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, nats.ErrNoResponders) {
		if p := c.asyncErr.Swap(nil); p != nil && errors.Is(*p, nats.ErrPermissionViolation) {
			return fmt.Errorf("NATS refused to let pgaudit-cdc publish to %s (%w): grant its user publish permission on %s and on the JetStream API ($JS.API.>)", c.cfg.Subject, *p, c.cfg.Subject)
		}
	}
	return err
}

func reasonOf(err error) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		return "wrong_sequence"
	case errors.Is(err, errDuplicate):
		return "duplicate"
	case errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout"
	case errors.Is(err, nats.ErrNoResponders):
		return "no_responders"
	default:
		return "connection"
	}
}

func (c *Client) observe(failure error, start time.Time) {
	if c.cfg.Hooks.Post != nil {
		outcome := "ack"
		if failure != nil {
			outcome = reasonOf(failure)
		}
		c.cfg.Hooks.Post(outcome, time.Since(start))
	}
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

// openStream finds the stream, or makes it, and checks its configuration.
func (c *Client) openStream(ctx context.Context) (jetstream.Stream, error) {
	if c.stream != nil {
		return c.stream, nil
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	s, err := c.js.Stream(actx, c.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		want := c.want
		if want.Replicas == 0 {
			want.Replicas = c.defaultReplicas()
		}
		s, err = c.js.CreateStream(actx, want.Config())
		if err == nil {
			c.log.Info("created the JetStream stream", "stream", c.cfg.Stream, "subject", c.cfg.Subject, "replicas", want.Replicas)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	want := c.want
	if want.Replicas == 0 {
		want.Replicas = c.defaultReplicas()
	}
	if ps := want.Check(s.CachedInfo().Config); len(ps) > 0 {
		return nil, &StreamError{Stream: c.cfg.Stream, Problems: ps}
	}
	c.stream = s
	return s, nil
}

// defaultReplicas: 3 when the cluster has three or more servers, else 1.
func (c *Client) defaultReplicas() int {
	if len(c.nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// explainAPI adds the fix to the JetStream API refusals a user causes.
func (c *Client) explainAPI(err error) error {
	if p := c.asyncErr.Load(); p != nil && errors.Is(*p, nats.ErrPermissionViolation) {
		return fmt.Errorf("%w (%w): grant pgaudit-cdc's NATS user the JetStream API ($JS.API.>) and publish on %s", err, *p, c.cfg.Subject)
	}
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: enable JetStream on the servers and for pgaudit-cdc's account", err)
	}
	return err
}

// sync reads the stream's state: where its chain stands, whether it still
// holds the history this process saw, and which of this identity's events
// it holds among its newest messages.
func (c *Client) sync(ctx context.Context) error {
	s, err := c.openStream(ctx)
	if err != nil {
		return err
	}
	info, err := c.info(ctx, s)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		c.stream = nil
		if c.highest > 0 {
			// The stream this process delivered into is gone.
			return &publish.HistoryLostError{Previous: int64(c.highest), Got: 0}
		}
	}
	if err != nil {
		return err
	}
	if c.created.IsZero() {
		c.created = info.Created
	}
	last := info.State.LastSeq
	if !info.Created.Equal(c.created) || last < c.highest {
		return &publish.HistoryLostError{Previous: int64(c.highest), Got: int64(last)}
	}
	if ps := c.want.Check(info.Config); len(ps) > 0 {
		c.stream = nil
		return &StreamError{Stream: c.cfg.Stream, Problems: ps}
	}
	present := map[string][]storedCopy{}
	head := Link{Seq: last, Hash: chain.Genesis}
	var chained bool
	first := info.State.FirstSeq
	if last >= uint64(c.cfg.ReadBack) {
		first = max(first, last-uint64(c.cfg.ReadBack)+1)
	}
	// The newest chained message is what the next event links to; the
	// stream is read newest last, so it is the last one seen.
	err = c.scan(ctx, first, last, func(seq uint64, data []byte) {
		if e, err := Parse(seq, data); err == nil {
			head.Hash, chained = e.Hash, true
		}
		key, ok := keyOf(data)
		if !ok {
			return
		}
		if sys, slot, _, ok := envelope.ParseKey(key); !trail.IsTrailKey(key) && (!ok || sys != c.systemID || slot != c.slot) {
			return
		}
		if d, err := trail.StoredDigest(data); err == nil {
			present[key] = append(present[key], storedCopy{seq: seq, digest: d})
		}
	})
	if err != nil {
		return err
	}
	if !chained && last > 0 && first > info.State.FirstSeq {
		c.log.Warn("none of the stream's newest messages is a chained event; the next event starts a new chain", "stream", c.cfg.Stream, "last_seq", last)
	}
	c.head, c.present, c.synced = head, present, true
	c.highest = max(c.highest, last)
	c.up(true)
	return nil
}

// keyOf reads payload.metadata.idempotency_key of a stored message.
func keyOf(data []byte) (string, bool) {
	st, _, err := publish.ReadStored(data)
	return st.Key, err == nil && st.Key != ""
}

// scan calls fn with every message from sequence first to last, in order,
// through an ordered consumer.
func (c *Client) scan(ctx context.Context, first, last uint64, fn func(seq uint64, data []byte)) error {
	if first == 0 || first > last {
		return nil
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	cons, err := c.stream.OrderedConsumer(actx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first})
	if err != nil {
		return fmt.Errorf("reading the stream back: %w", c.explainAPI(err))
	}
	for next := first; next <= last; {
		batch, err := cons.Fetch(int(min(last-next+1, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("reading the stream back from sequence %d: %w", next, err)
		}
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("reading the stream back: %w", err)
			}
			got++
			seq := md.Sequence.Stream
			if seq > last {
				return nil
			}
			fn(seq, m.Data())
			next = seq + 1
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("reading the stream back from sequence %d: %w", next, err)
		}
		if got == 0 {
			return fmt.Errorf("reading the stream back: no message came at sequence %d of %d", next, last)
		}
	}
	return nil
}

// Scan calls fn with every message of the stream from sequence first to
// the last one stored when Scan starts, in order (verify, relay, tests).
func (c *Client) Scan(ctx context.Context, first uint64, fn func(seq uint64, data []byte)) error {
	s, err := c.openStream(ctx)
	if err != nil {
		return err
	}
	info, err := c.info(ctx, s)
	if err != nil {
		return err
	}
	return c.scan(ctx, max(first, info.State.FirstSeq), info.State.LastSeq, fn)
}

// ReadBack calls fn with each of the stream's newest Config.ReadBack
// messages of source (every source: ""), oldest first (the trail's seals
// are read so).
func (c *Client) ReadBack(ctx context.Context, source string, fn func(publish.Stored)) error {
	s, err := c.openStream(ctx)
	if err != nil {
		return err
	}
	info, err := c.info(ctx, s)
	if err != nil {
		return err
	}
	last, first := info.State.LastSeq, info.State.FirstSeq
	if last >= uint64(c.cfg.ReadBack) {
		first = max(first, last-uint64(c.cfg.ReadBack)+1)
	}
	return c.scan(ctx, first, last, func(seq uint64, data []byte) {
		st, src, err := publish.ReadStored(data)
		if err != nil || source != "" && src != source {
			return
		}
		st.EventID = int64(seq)
		fn(st)
	})
}

// LastDelivered returns the highest position among the events of systemID
// and keySlot in the stream's newest Config.ReadBack messages, with that
// event's commit timestamp (zero when none is found): where the next event
// links to, and where a capture gap begins. With before set, only events of
// transactions committed before it count. The stream holds every source,
// so sources is not needed.
func (c *Client) LastDelivered(ctx context.Context, systemID, keySlot string, _ []string, before pgoutput.LSN) (envelope.Position, string, error) {
	var last envelope.Position
	var commitTime string
	err := c.ReadBack(ctx, "", func(e publish.Stored) {
		sys, slot, pos, ok := envelope.ParseKey(e.Key)
		// A transaction whose commit record starts at before is replayed;
		// a GAP event (sequence 0) at before is not.
		if !ok || before != 0 && (pos.CommitLSN > before || pos.CommitLSN == before && pos.Seq > 0) {
			return
		}
		if sys == systemID && slot == keySlot && last.Less(pos) {
			last, commitTime = pos, e.CommitTime
		}
	})
	return last, commitTime, err
}

// HasEvent reports whether the stream's newest messages of source include
// key (on content that digests to digest, unless nil).
func (c *Client) HasEvent(ctx context.Context, source, key string, digest *[32]byte) (bool, error) {
	found := false
	err := c.ReadBack(ctx, source, func(s publish.Stored) {
		if s.Key != key {
			return
		}
		if digest == nil {
			found = true
		} else if d, err := s.Digest(); err == nil && d == *digest {
			found = true
		}
	})
	return found, err
}

// Health checks that the cluster answers for the stream.
func (c *Client) Health(ctx context.Context) error {
	s, err := c.openStream(ctx)
	if err != nil {
		return err
	}
	_, err = c.info(ctx, s)
	return err
}

// RelayBucket is the key-value bucket where relays keep their position.
const RelayBucket = "PGAUDIT_CDC_RELAY"

// Position is where a relay stands: the last stream sequence the spine
// holds, and the revision it was saved at (for the next compare-and-set).
type Position struct {
	Seq, Revision uint64
}

// relayPositions opens (or makes) the replicated bucket of relay positions.
func (c *Client) relayPositions(ctx context.Context) (jetstream.KeyValue, error) {
	actx, cancel := c.api(ctx)
	defer cancel()
	kv, err := c.js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{Bucket: RelayBucket,
		Description: "pgaudit-cdc relay positions", History: 1, Storage: jetstream.FileStorage, Replicas: c.WantReplicas()})
	if err != nil {
		return nil, fmt.Errorf("opening the relay position bucket %s: %w", RelayBucket, c.explainAPI(err))
	}
	return kv, nil
}

// RelayPosition reads relay name's position (zero: it starts at the
// stream's first message).
func (c *Client) RelayPosition(ctx context.Context, name string) (Position, error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return Position{}, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	e, err := kv.Get(actx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, fmt.Errorf("reading the position of relay %s: %w", name, err)
	}
	seq, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("the position of relay %s in bucket %s is %q, not a sequence", name, RelayBucket, e.Value())
	}
	return Position{Seq: seq, Revision: e.Revision()}, nil
}

// ErrRelayMoved: another relay of the same name saved a position since
// this one read it.
var ErrRelayMoved = errors.New("another relay of this name moved the position")

// SaveRelayPosition saves seq as relay name's position, if it is still at
// p (compare-and-set), and returns the new position.
func (c *Client) SaveRelayPosition(ctx context.Context, name string, p Position, seq uint64) (Position, error) {
	kv, err := c.relayPositions(ctx)
	if err != nil {
		return p, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	value := []byte(strconv.FormatUint(seq, 10))
	var rev uint64
	if p.Revision == 0 {
		rev, err = kv.Create(actx, name, value)
	} else {
		rev, err = kv.Update(actx, name, value, p.Revision)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return p, fmt.Errorf("saving the position of relay %s: %w", name, ErrRelayMoved)
	}
	if err != nil {
		return p, fmt.Errorf("saving the position of relay %s: %w", name, err)
	}
	return Position{Seq: seq, Revision: rev}, nil
}

// Tail reads the stream from sequence first on, in order, through an
// ordered consumer: next returns the messages that came within wait.
func (c *Client) Tail(ctx context.Context, first uint64) (next func(max int, wait time.Duration) ([]jetstream.Msg, error), err error) {
	s, err := c.openStream(ctx)
	if err != nil {
		return nil, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if first > 1 {
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first}
	}
	cons, err := s.OrderedConsumer(actx, cfg)
	if err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	return func(n int, wait time.Duration) ([]jetstream.Msg, error) {
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(wait))
		if err != nil {
			return nil, err
		}
		var out []jetstream.Msg
		for m := range batch.Messages() {
			out = append(out, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return out, err
		}
		return out, nil
	}, nil
}

// Inspect reads the stream without creating it: its state, and how it is
// weaker than the trail needs (found false: there is no such stream yet).
func (c *Client) Inspect(ctx context.Context) (info *jetstream.StreamInfo, problems []Problem, found bool, err error) {
	actx, cancel := c.api(ctx)
	defer cancel()
	s, err := c.js.Stream(actx, c.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("reading stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	want := c.want
	if want.Replicas == 0 {
		want.Replicas = c.defaultReplicas()
	}
	info = s.CachedInfo()
	return info, want.Check(info.Config), true, nil
}

// WantReplicas is the replica count the stream must have.
func (c *Client) WantReplicas() int {
	if c.want.Replicas > 0 {
		return c.want.Replicas
	}
	return c.defaultReplicas()
}

// apiTimeout bounds each JetStream API request: a request sent while a
// stream has no leader (an election) is never answered, and is asked again.
const apiTimeout = 5 * time.Second

func (c *Client) api(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, apiTimeout)
}

// info reads the stream's configuration and state.
func (c *Client) info(ctx context.Context, s jetstream.Stream) (*jetstream.StreamInfo, error) {
	actx, cancel := c.api(ctx)
	defer cancel()
	info, err := s.Info(actx)
	if err != nil {
		return nil, fmt.Errorf("reading the state of stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	return info, nil
}

// redactURLs drops user information from server URLs for messages.
func redactURLs(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				u = u[:s+3] + "REDACTED@" + u[at+1:]
			}
		}
		out[i] = u
	}
	return strings.Join(out, ",")
}
