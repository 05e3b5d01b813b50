package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// reader owns the replication session, the catalog connection and the
// decoder (all fields below are used by its goroutine only, except the
// channels and the atomics).
type reader struct {
	a    *agent
	sess *replication.Session
	meta *pgx.Conn
	// house is asked to run at once when the stream shows something to fix
	// (a weakened replica identity); it runs on its own goroutine.
	house    *housekeeper
	stream   *decode.Stream
	resolver typeResolver

	items    chan batch
	freed    chan struct{} // signalled by the publisher when it finished a batch
	pubDone  <-chan error
	pubErr   error
	acked    *atomic.Uint64
	inflight atomic.Int64

	// recorded is the highest LSN saved as progress (capture.SaveProgress):
	// nothing beyond it is ever confirmed.
	recorded decode.LSN
	// forceRecord: the server asked for a reply; record without slack.
	forceRecord bool

	nextStatus   time.Time
	serverWALEnd decode.LSN
	lastQueued   decode.LSN // last keepalive position handed to the publisher
	pending      batch      // items not yet handed over (see queue)
}

// batch is what goes from the reader to the publisher in one hand-over: a
// transaction's items, or part of a large one. One wake-up of the publisher
// per transaction instead of per row keeps the agent's CPU per event low
// (the Go scheduler's hand-off cost dominated small transactions).
type batch struct {
	items []work
	size  int64 // bytes of envelopes
}

// Batches are handed over at each commit, or sooner when they grow this big.
const (
	maxBatchItems = 256
	maxBatchBytes = 1 << 20
)

type agent = Agent

// typeResolver maps column type OIDs to their JSON mapping (catalog.Resolver).
type typeResolver interface {
	Resolve(ctx context.Context, oid uint32) (*decode.Type, error)
	Forget()
}

func (r *reader) run(ctx context.Context) error {
	interval := r.a.cfg.StatusInterval
	r.nextStatus = time.Now()
	for {
		if err := r.tick(ctx, interval); err != nil {
			return err
		}
		rec, ok, err := r.sess.Receive(ctx, r.nextStatus)
		if err != nil {
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
				// The server wants everything sent confirmed (a walsender
				// stopping for a shutdown waits for it): record without
				// slack, or confirm anyway when recording fails.
				r.nextStatus = time.Time{}
				r.forceRecord = true
			}
			// Outside a transaction everything up to the server's position
			// has been received: once delivered, it can be confirmed, so an
			// idle slot does not pin WAL.
			if !r.stream.InTransaction() && rec.ServerWALEnd > r.lastQueued {
				if err := r.queue(ctx, work{keepalive: rec.ServerWALEnd}); err != nil {
					return err
				}
				if err := r.flush(ctx); err != nil {
					return err
				}
				r.lastQueued = rec.ServerWALEnd
			}
			continue
		}
		if err := r.handle(ctx, rec); err != nil {
			return err
		}
	}
}

// tick sends the standby status update and does housekeeping when due.
func (r *reader) tick(ctx context.Context, interval time.Duration) error {
	now := time.Now()
	if !now.Before(r.nextStatus) {
		acked := decode.LSN(r.acked.Load())
		slack := decode.LSN(progressSlack)
		if r.forceRecord {
			slack, r.forceRecord = 0, false
		}
		if err := r.recordProgress(ctx, acked, slack); err != nil {
			// Nothing is ever confirmed beyond the recorded progress: end
			// the session instead (a server shutting down then lets its
			// walsender go at once), and start again.
			return err
		}
		if err := r.sess.SendStatus(ctx, r.confirmable(), false); err != nil {
			return err
		}
		r.nextStatus = now.Add(interval)
		if r.serverWALEnd > acked {
			r.a.m.ReplicationLag.Set(float64(r.serverWALEnd - acked))
		} else {
			r.a.m.ReplicationLag.Set(0)
		}
	}
	return nil
}

// progressSlack is how far the acknowledged LSN may run ahead of the
// recorded progress before it is saved again. Saving costs a commit record
// in the WAL, which the next keepalive reports as new WAL to confirm: without
// the slack an idle database would write one every status interval for ever.
// The slot then lags by at most this much, which costs nothing but a replay
// of a few bytes (found in the spine by the read-back) after a restart.
const progressSlack = 512

// recordProgress saves acked as the slot's progress when it is more than
// slack ahead of the last record.
func (r *reader) recordProgress(ctx context.Context, acked, slack decode.LSN) error {
	if acked <= r.recorded+slack {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := capture.SaveProgress(ctx, r.meta, r.a.cfg.Slot, acked); err != nil {
		return fmt.Errorf("recording the slot progress before confirming it: %w", err)
	}
	r.recorded = acked
	return nil
}

// confirmable is the position sent to the server: what was delivered, but
// never beyond the recorded progress.
func (r *reader) confirmable() decode.LSN {
	return min(decode.LSN(r.acked.Load()), r.recorded)
}

// housekeeping refreshes slot metrics and fixes the replica identity of
// partitions created after their table was watched. Failures are logged, not
// fatal: the stream matters more.

func (r *reader) handle(ctx context.Context, rec replication.Received) error {
	msg, err := decode.Parse(rec.Data)
	if err != nil {
		return fmt.Errorf("decoding the message at %s: %w", rec.WALStart, err)
	}
	if rel, ok := msg.(*decode.RelationMessage); ok {
		// A new RELATION message means the table (or a type it uses) may
		// have changed: resolve its column types afresh.
		r.resolver.Forget()
		for i := range rel.Columns {
			t, err := r.resolver.Resolve(ctx, rel.Columns[i].TypeOID)
			if err != nil {
				return fmt.Errorf("resolving the type of %s.%s: %w", decode.QualifiedName(rel.Namespace, rel.Name), rel.Columns[i].Name, err)
			}
			rel.Columns[i].Type = t
		}
	}
	for _, oid := range r.stream.BackfillTypes(msg) {
		t, err := r.resolver.Resolve(ctx, oid)
		if err != nil {
			return fmt.Errorf("resolving type %d of a backfill chunk: %w", oid, err)
		}
		r.stream.SetType(oid, t)
	}
	return r.stream.Apply(rec.WALStart, msg, func(it decode.Item) error {
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
			r.a.m.ReplicaIdentityWeakened.WithLabelValues(it.Table).Inc()
			r.a.log.Warn(it.Notice+"; restoring FULL", "table", it.Table)
			r.house.poke() // fix it now rather than within 15 s
			return nil
		}
		return r.queue(ctx, w)
	})
}

// queue adds w to the pending batch and hands the batch over at a commit or
// when it is full.
func (r *reader) queue(ctx context.Context, w work) error {
	r.pending.items = append(r.pending.items, w)
	r.pending.size += w.size
	if w.item.Kind == decode.ItemCommit || len(r.pending.items) >= maxBatchItems || r.pending.size >= maxBatchBytes {
		return r.flush(ctx)
	}
	return nil
}

func (r *reader) flush(ctx context.Context) error {
	if len(r.pending.items) == 0 {
		return nil
	}
	b := r.pending
	r.pending = batch{items: make([]work, 0, min(2*len(b.items), maxBatchItems))}
	return r.send(ctx, b)
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

// send hands w to the publisher, waiting while the buffer is full (by count
// or bytes) and keeping the replication session alive meanwhile.
func (r *reader) send(ctx context.Context, w batch) error {
	for {
		fits := w.size == 0 || r.inflight.Load() == 0 || r.inflight.Load()+w.size <= r.a.cfg.MaxBufferedBytes
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
