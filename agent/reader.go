package agent

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/confirm"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/spool"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// reader owns the replication session, the catalog connection and the
// decoder (all fields below are used by its goroutine only, except the
// channels, the atomics and the confirm rule, shared with the publisher).
type reader struct {
	a    *agent
	sess *replication.Session
	meta *pgx.Conn
	// house is asked to run at once when the stream shows something to fix
	// (a weakened replica identity); it runs on its own goroutine.
	house  *housekeeper
	stream *decode.Stream
	// parser's messages are valid until the next: Stream.Apply copies what
	// it keeps.
	parser pgoutput.Parser
	// spool keeps the transactions the server streams while in progress
	// until they commit; nil when the session streams whole transactions.
	spool *spool.Spool

	items    chan batch
	freed    chan struct{} // signalled by the publisher when it finished a batch
	spare    chan []work   // storage of delivered batches, for the next ones
	pubDone  <-chan error
	pubErr   error
	inflight atomic.Int64

	// confirm says what may be confirmed: the publisher accepts, the reader
	// records (capture.SaveProgress) and confirms.
	confirm *confirm.Tracker
	// forceRecord: the server asked for a reply; record without slack.
	forceRecord bool

	nextStatus time.Time
	// handed is the highest position handed to the publisher; reported the
	// accepted position at the last status update; early when the last
	// early one went (see settle).
	handed, reported pgoutput.LSN
	early            time.Time
	// backfills are the backfills whose last chunk was handed over, by
	// the end of its transaction: delivered once that is recorded.
	backfills    []doneBackfill
	serverWALEnd pgoutput.LSN
	lastQueued   pgoutput.LSN // last keepalive position handed to the publisher
	pending      batch        // items not yet handed over (see queue)
	spilled      int64        // the spool's SpilledBytes last counted (it counts for the agent's life)
	busy         bool         // the last wait for a message was shorter than gatherDelay
}

// batch is what goes from the reader to the publisher in one hand-over: a
// run of transactions' items (whatever arrived before the stream drained),
// or part of a large one. One wake-up of the publisher per run instead of
// per row or per transaction keeps the agent's CPU per event low (the Go
// scheduler's hand-off cost dominated small transactions).
type batch struct {
	items []work
	size  int64 // bytes of envelopes
}

// gatherDelay is how long the reader lets messages gather once it handed
// its work over and emptied the socket, while they arrive faster than this.
// At thousands of small transactions a second a read otherwise returns one
// message each, and the wake-ups of the reading and the publishing
// goroutine (a system call, a scheduler round and a futex each) cost more
// than decoding: waiting halved the agent's CPU per transaction. Each such
// round (a timer, a blocking epoll, the reads, the publisher's write, the
// runtime's own monitor waking up) still cost tens of µs; at 8,000 single-row
// transactions a second, 4 ms rounds instead of 1 ms took about a third off
// the agent's CPU per transaction (scenario 4b held to that rate), and 8 ms
// took no more. The price is at most this much latency under load (4 ms
// against the 20 ms budget for p99 commit → accepted), none when idle (the
// first message after a pause is read at once) and none with a backlog (the
// socket is not empty then).
const gatherDelay = 4 * time.Millisecond

// tickEvery is how many buffered messages the reader may take before it
// looks at the clock for the status update (see run).
const tickEvery = 64

// The status update goes every status interval (10 s by default), and
// early once the stream is quiet: when no message came for settlePoll and
// something was accepted since the last update, at most every earlyGap.
// Without it the confirmed position reached the end of the WAL up to a
// whole interval after the last change was delivered, which lag dashboards
// read as a backlog. Under steady load the stream is never quiet that long;
// a trickle of transactions (under 20 a second) gets at most one update,
// and one progress record, a second.
const (
	settlePoll = 50 * time.Millisecond
	earlyGap   = time.Second
)

// Batches are handed over when the stream is drained, or sooner when they
// grow this big.
const (
	maxBatchItems = 256
	maxBatchBytes = 1 << 20
)

type agent = Agent

func (r *reader) run(ctx context.Context) error {
	interval := r.a.cfg.StatusInterval
	r.nextStatus = time.Now()
	sinceTick := 0
	for {
		// The clock is read before every wait (nothing pending) and every
		// tickEvery messages taken from the buffer: once per message it
		// was 3 % of the agent's CPU with small transactions.
		if len(r.pending.items) == 0 || sinceTick >= tickEvery {
			sinceTick = 0
			if err := r.tick(ctx, interval); err != nil {
				return err
			}
		}
		sinceTick++
		rec, ok, err := r.receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				r.handOverNow()
			}
			return err
		}
		if !ok {
			continue
		}
		if rec.Notice != "" {
			r.a.log.Warn("the server says: "+rec.Notice, "slot", r.a.cfg.Slot)
			continue
		}
		if rec.ServerWALEnd > r.serverWALEnd {
			r.serverWALEnd = rec.ServerWALEnd
		}
		if rec.Keepalive {
			if rec.ReplyRequested {
				sinceTick = tickEvery
			}
			if err := r.keepalive(ctx, rec); err != nil {
				return err
			}
			continue
		}
		if err := r.take(ctx, rec); err != nil {
			return err
		}
		if len(rec.Data) > 0 && (rec.Data[0] == 'R' || rec.Data[0] == 'M') {
			// RELATION messages and backfill chunks (logical messages)
			// may have waited for the catalog: look at the clock next.
			sinceTick = tickEvery
		}
	}
}

// receive returns the next message, if any.
func (r *reader) receive(ctx context.Context) (rec replication.Received, ok bool, err error) {
	if len(r.pending.items) == 0 {
		waited := time.Now()
		deadline, settling := r.nextStatus, r.settling()
		if soon := waited.Add(settlePoll); settling && soon.Before(deadline) {
			deadline = soon
		}
		rec, ok, err = r.sess.Receive(ctx, deadline)
		r.busy = ok && time.Since(waited) < gatherDelay
		if err == nil && !ok && settling {
			err = r.settle(ctx)
		}
		return rec, ok, err
	}
	// Work is waiting: take what is already buffered first, and hand the
	// work over once the stream is drained. Under load many transactions
	// then share one hand-over (one goroutine wake-up instead of one per
	// transaction); when idle, a commit is handed over as soon as it
	// arrived.
	rec, ok, err = r.sess.Poll(ctx)
	if err == nil && !ok {
		err = r.flush(ctx)
		if err == nil && r.busy && r.sess.Drained() {
			// Messages come faster than one per gatherDelay, but the
			// socket is empty: let more arrive before reading again, so
			// that one wake-up takes many of them (see gatherDelay). With
			// a backlog in the socket (a bulk drain, catching up) it reads
			// on at once.
			err = r.sess.Gather(ctx, gatherDelay)
		}
	}
	return rec, ok, err
}

// settling says the publisher holds work not accepted yet, or accepted
// work not reported: a quiet stream then reports it early (settle).
func (r *reader) settling() bool {
	accepted := r.confirm.Accepted()
	return accepted < r.handed || accepted > r.reported
}

// settle sends the status update early: the stream was quiet for
// settlePoll, and something accepted is not reported yet.
func (r *reader) settle(ctx context.Context) error {
	now := time.Now()
	if r.confirm.Accepted() <= r.reported || now.Sub(r.early) < earlyGap {
		return nil
	}
	r.early = now
	r.nextStatus = now
	return r.tick(ctx, r.a.cfg.StatusInterval)
}

// keepalive handles a keepalive message (the caller looks at the clock next
// when it asks for a reply).
func (r *reader) keepalive(ctx context.Context, rec replication.Received) error {
	if rec.ReplyRequested {
		// The server wants everything sent confirmed (a walsender stopping
		// for a shutdown waits for it): record without slack. When
		// recording fails the session ends, and its final status confirms
		// what was recorded.
		r.nextStatus = time.Time{}
		r.forceRecord = true
	}
	// Outside a transaction everything up to the server's position has been
	// received: once delivered, it can be confirmed, so an idle slot does
	// not pin WAL.
	if r.stream.InTransaction() || r.spool.InBlock() || rec.ServerWALEnd <= r.lastQueued {
		return nil
	}
	if err := r.queue(ctx, work{keepalive: rec.ServerWALEnd}); err != nil {
		return err
	}
	if err := r.flush(ctx); err != nil {
		return err
	}
	r.lastQueued = rec.ServerWALEnd
	return nil
}

// tick sends the standby status update and does housekeeping when due.
func (r *reader) tick(ctx context.Context, interval time.Duration) error {
	select {
	case err := <-r.pubDone:
		// The publisher stopped while nothing was being handed over (a
		// spine that lost its history, say): the session ends with it.
		r.pubErr = err
		if err == nil {
			err = context.Canceled
		}
		return fmt.Errorf("publisher stopped: %w", err)
	default:
	}
	now := time.Now()
	if !now.Before(r.nextStatus) {
		slack := pgoutput.LSN(progressSlack)
		if r.forceRecord {
			slack, r.forceRecord = 0, false
		}
		accepted, err := r.recordProgress(ctx, slack)
		if err != nil {
			// Nothing is ever confirmed beyond the recorded progress: end
			// the session instead (a server shutting down then lets its
			// walsender go at once), and start again.
			return err
		}
		if err := r.sess.SendStatus(ctx, r.confirm.Confirmable(), false); err != nil {
			return err
		}
		r.reported = accepted
		r.nextStatus = now.Add(interval)
		if r.spool != nil {
			r.observeSpool()
		}
		if r.serverWALEnd > accepted {
			r.a.m.ReplicationLag.Set(float64(r.serverWALEnd - accepted))
		} else {
			r.a.m.ReplicationLag.Set(0)
		}
	}
	return nil
}

// track notes what b hands over: its highest position, and the backfills
// it completes.
func (r *reader) track(b batch) {
	for _, w := range b.items {
		r.handed = max(r.handed, w.keepalive, w.item.EndLSN)
		if len(w.item.Backfills) > 0 {
			r.backfills = append(r.backfills, doneBackfill{end: w.item.EndLSN, ids: w.item.Backfills})
		}
	}
}

// doneBackfill is a backfill whose last chunk's transaction ends at end.
type doneBackfill struct {
	end pgoutput.LSN
	ids []int64
}

// markBackfillsDelivered records as delivered the backfills whose last
// chunk's transaction is accepted: every READ event of theirs was accepted
// by the destination (`backfill` waits for this). A failure is logged and
// tried again at the next record.
func (r *reader) markBackfillsDelivered(ctx context.Context, accepted pgoutput.LSN) {
	var ids []int64
	n := 0
	for _, b := range r.backfills {
		if b.end > accepted {
			break
		}
		ids = append(ids, b.ids...)
		n++
	}
	if len(ids) == 0 {
		return
	}
	if err := capture.MarkBackfillsDelivered(ctx, r.meta, ids); err != nil {
		r.a.log.Warn("recording delivered backfills failed; tried again at the next progress record", "backfills", ids, "err", err)
		return
	}
	r.backfills = r.backfills[n:]
}

// progressSlack is how far the accepted LSN may run ahead of the
// recorded progress before it is saved again. Saving costs a commit record
// in the WAL, which the next keepalive reports as new WAL to confirm: without
// the slack an idle database would write one every status interval for ever.
// The slot then lags by at most this much, which costs nothing but a replay
// of a few bytes (found in the spine by the read-back) after a restart.
const progressSlack = 512

// recordProgress saves the accepted LSN as the slot's progress when it is
// more than slack ahead of the last record (confirm.Tracker.NeedsRecord),
// and returns it. When saving fails, nothing more becomes confirmable.
func (r *reader) recordProgress(ctx context.Context, slack pgoutput.LSN) (pgoutput.LSN, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Before the progress: once it is recorded, nothing before it is read
	// again, so a backfill delivered by then is said so first (and at every
	// status update until that succeeds, whether a record is due or not).
	r.markBackfillsDelivered(ctx, r.confirm.Accepted())
	accepted, due := r.confirm.NeedsRecord(slack)
	if !due {
		return accepted, nil
	}
	if err := capture.SaveProgress(ctx, r.meta, r.a.cfg.Slot, accepted); err != nil {
		return accepted, fmt.Errorf("recording the slot progress before confirming it: %w", err)
	}
	r.confirm.Recorded(accepted)
	return accepted, nil
}

// take hands one message of the session to the spool, when the session
// streams in-progress transactions, and decodes what is not kept there: a
// message of no stream block at once, a streamed transaction at its
// commit.
func (r *reader) take(ctx context.Context, rec replication.Received) error {
	var release func([]byte)
	if rec.Region != nil {
		// A large message, mapped from the file it was set aside in: its
		// pages go as its values are converted, or as it is spooled.
		release = rec.Region.Release
		r.stream.SetRelease(release)
		defer r.stream.SetRelease(nil)
	}
	if r.spool == nil {
		return r.handle(ctx, rec.WALStart, rec.Data, false)
	}
	out, err := r.spool.Offer(rec.WALStart, rec.Data, release)
	if err != nil {
		return fmt.Errorf("receiving the message at %s: %w", rec.WALStart, err)
	}
	switch {
	case out.Pass:
		return r.handle(ctx, rec.WALStart, rec.Data, false)
	case out.Event == spool.Aborted:
		r.a.m.StreamedTransactions.WithLabelValues("aborted").Inc()
	case out.Replay != nil:
		if err := r.replay(ctx, out.Replay); err != nil {
			return err
		}
		r.a.m.StreamedTransactions.WithLabelValues("committed").Inc()
	}
	if out.Event != spool.None {
		r.observeSpool()
	}
	return nil
}

// replay decodes a streamed transaction at its commit: the same messages,
// BEGIN to COMMIT, as protocol 1 sends for it, so its events are those of
// a transaction sent whole. The socket waits meanwhile; the status update
// still goes when due.
func (r *reader) replay(ctx context.Context, rp *spool.Replay) error {
	defer rp.Close()
	// A large record is mapped from the spill file: its pages go as its
	// values are converted.
	r.stream.SetRelease(rp.Release)
	defer r.stream.SetRelease(nil)
	if err := r.apply(ctx, rp.At, rp.Begin()); err != nil {
		return err
	}
	for n := 1; ; n++ {
		lsn, data, err := rp.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := r.handle(ctx, lsn, data, true); err != nil {
			return err
		}
		if n%tickEvery == 0 {
			if err := r.tick(ctx, r.a.cfg.StatusInterval); err != nil {
				return err
			}
		}
	}
	return r.apply(ctx, rp.At, rp.End())
}

// observeSpool sets the spool's gauges.
func (r *reader) observeSpool() {
	st := r.spool.Stats()
	r.a.m.StreamingOpen.Set(float64(st.Open))
	r.a.m.SpillMemoryBytes.Set(float64(st.MemoryBytes))
	r.a.m.SpillDiskBytes.Set(float64(st.DiskBytes))
	if d := st.SpilledBytes - r.spilled; d > 0 {
		r.a.m.SpilledBytes.Add(float64(d))
	}
	r.spilled = st.SpilledBytes
}

// handle parses one message received at lsn (as sent inside a stream
// block when streamed) and applies it.
func (r *reader) handle(ctx context.Context, lsn pgoutput.LSN, data []byte, streamed bool) error {
	var msg pgoutput.Message
	var err error
	if streamed {
		_, msg, err = r.parser.ParseStreamed(data)
	} else {
		msg, err = r.parser.Parse(data)
	}
	if err != nil {
		return fmt.Errorf("decoding the message at %s: %w", lsn, err)
	}
	return r.apply(ctx, lsn, msg)
}

// apply applies one message to the stream, which asks the catalog for
// column types itself (StreamConfig.Types) when a RELATION message or a
// backfill chunk arrives, and queues what the stream yields.
func (r *reader) apply(ctx context.Context, lsn pgoutput.LSN, msg pgoutput.Message) error {
	return r.stream.Apply(ctx, lsn, msg, func(it decode.Item) error {
		w := work{item: it}
		switch it.Kind {
		case decode.ItemEvent:
			w.size = int64(len(it.Event.Body))
		case decode.ItemWatchChanged:
			r.logWatchChange(it)
			return nil
		case decode.ItemNotice:
			r.a.log.Warn(it.Notice)
			return nil
		case decode.ItemRejectedControl:
			r.a.m.UnauthenticatedControl.WithLabelValues(it.Prefix).Inc()
			r.a.log.Error(it.Notice, "prefix", it.Prefix)
			return nil
		case decode.ItemReplicaIdentity:
			if r.keptOffFull(ctx, it.TableOID) {
				// pgaudit-cdc itself keeps it off FULL (see
				// watches.VirtualColumnsNotice): not a weakening.
				r.a.log.Info(it.Notice+"; it has virtual generated columns, which REPLICA IDENTITY FULL would make refuse every UPDATE and DELETE", "table", it.Table)
				return nil
			}
			r.a.m.ReplicaIdentityWeakened.WithLabelValues(it.Table).Inc()
			r.a.log.Warn(it.Notice+"; restoring FULL", "table", it.Table)
			r.house.poke() // fix it now rather than within 15 s
			return nil
		}
		return r.queue(ctx, w)
	})
}

// queue adds w to the pending batch and hands the batch over when it is
// full; run hands it over when the stream has nothing more buffered.
func (r *reader) queue(ctx context.Context, w work) error {
	r.pending.items = append(r.pending.items, w)
	r.pending.size += w.size
	if len(r.pending.items) >= maxBatchItems || r.pending.size >= maxBatchBytes {
		return r.flush(ctx)
	}
	return nil
}

// handOverNow hands the pending work to the publisher if there is room at
// once, without waiting. At a stop, transactions already read are then
// still delivered within the shutdown grace, as they were when every commit
// was handed over at once.
func (r *reader) handOverNow() {
	b := r.pending
	if len(b.items) == 0 {
		return
	}
	r.track(b)
	if !r.fits(b.size) {
		return
	}
	r.inflight.Add(b.size)
	select {
	case r.items <- b:
		r.pending = batch{}
	default:
		r.inflight.Add(-b.size)
	}
}

func (r *reader) flush(ctx context.Context) error {
	if len(r.pending.items) == 0 {
		return nil
	}
	b := r.pending
	r.track(b)
	var items []work
	select {
	case items = <-r.spare:
	default:
		items = make([]work, 0, min(2*len(b.items), maxBatchItems))
	}
	r.pending = batch{items: items}
	return r.send(ctx, b)
}

// keptOffFull says the table has virtual generated columns (PostgreSQL
// 18): pgaudit-cdc keeps such a table at its key as replica identity on
// purpose (watches.KeepFromFull). When the catalog cannot be asked, it is
// taken as a weakening.
func (r *reader) keptOffFull(ctx context.Context, oid uint32) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	virtual, _, err := watches.KeepFromFull(ctx, r.meta, oid)
	return err == nil && virtual
}

func (r *reader) logWatchChange(it decode.Item) {
	r.a.m.WatchChanges.Inc()
	target := []any{"table_oid", it.TableOID}
	if it.Schema != "" {
		target = []any{"schema", it.Schema}
	}
	switch {
	case !it.Watch.Active:
		r.a.log.Info("watch removed", target...)
	case it.Existed && it.Previous.Active:
		r.a.log.Info("watch updated", append(target, "kind", it.Watch.Kind, "source", it.Watch.Source)...)
	default:
		r.a.log.Info("watch added", append(target, "kind", it.Watch.Kind, "source", it.Watch.Source)...)
	}
}

// fits reports whether size more bytes of envelopes may be handed over now:
// the buffer's byte bound, which an empty buffer or a batch without
// envelopes always meets (one large event still goes, alone).
func (r *reader) fits(size int64) bool {
	return size == 0 || r.inflight.Load() == 0 || r.inflight.Load()+size <= r.a.cfg.MaxBufferedBytes
}

// send hands w to the publisher, waiting while the buffer is full (by count
// or bytes) and keeping the replication session alive meanwhile.
func (r *reader) send(ctx context.Context, w batch) error {
	for {
		fits := r.fits(w.size)
		var sendCh chan batch
		if fits {
			sendCh = r.items
			// Counted before the hand-over so the publisher's decrement can
			// never come first.
			r.inflight.Add(w.size)
			// Fast path: room in the buffer, no timer needed.
			select {
			case sendCh <- w:
				return nil
			default:
			}
		}
		wait := time.Until(r.nextStatus)
		if wait < 0 {
			wait = 0
		}
		t := time.NewTimer(wait)
		select {
		case sendCh <- w:
			t.Stop()
			return nil
		case <-r.freed:
		case err := <-r.pubDone:
			r.pubErr = err
			if err == nil {
				err = context.Canceled
			}
			err = fmt.Errorf("publisher stopped: %w", err)
			t.Stop()
			return err
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			if fits {
				r.inflight.Add(-w.size)
			}
			if err := r.tick(ctx, r.a.cfg.StatusInterval); err != nil {
				return err
			}
			continue
		}
		t.Stop()
		if fits {
			r.inflight.Add(-w.size)
		}
	}
}
