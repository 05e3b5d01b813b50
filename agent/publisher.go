package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// publisher delivers work items in order and advances acked.
type publisher struct {
	a        *Agent
	items    <-chan batch
	freed    chan<- struct{}
	acked    *atomic.Uint64
	inflight *atomic.Int64
	dl       *deadLetters
}

// batchSink delivers many events in order with several in flight
// (publish.Client.PublishBatch): done is called once per event, in order.
type batchSink interface {
	PublishBatch(ctx context.Context, evs []*decode.Event, done func(i int, err error)) error
}

// Most events gathered from several hand-overs into one pipelined delivery.
const (
	maxGatherEvents = 2048
	maxGatherBytes  = 8 << 20
)

func (p *publisher) run(ctx context.Context) error {
	defer p.dl.close(context.WithoutCancel(ctx))
	if bs, ok := p.a.cfg.Sink.(batchSink); ok {
		return p.runBatched(ctx, bs)
	}
	for {
		var b batch
		var ok bool
		select {
		case b, ok = <-p.items:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		for _, w := range b.items {
			if err := p.process(ctx, w); err != nil {
				return err
			}
		}
		if b.size > 0 {
			p.inflight.Add(-b.size)
		}
		select {
		case p.freed <- struct{}{}:
		default:
		}
	}
}

func (p *publisher) process(ctx context.Context, w work) error {
	switch {
	case w.keepalive != 0:
		p.advance(w.keepalive)
	case w.item.Kind == decode.ItemCommit:
		p.advance(w.item.EndLSN)
	case w.item.Kind == decode.ItemEvent:
		return p.deliver(ctx, w.item.Event)
	}
	return nil
}

// advance raises the acknowledged LSN; it never goes back.
func (p *publisher) advance(lsn pgoutput.LSN) {
	for {
		cur := p.acked.Load()
		if uint64(lsn) <= cur {
			return
		}
		if p.acked.CompareAndSwap(cur, uint64(lsn)) {
			p.a.m.ConfirmedLSN.Set(float64(lsn))
			return
		}
	}
}

// runBatched takes what the reader handed over, and whatever else is
// already waiting, and delivers the events in one pipelined run: under load,
// many small transactions share the window. Acknowledgements follow in order
// once every event before them is settled.
func (p *publisher) runBatched(ctx context.Context, bs batchSink) error {
	for {
		// A stop request wins over waiting work: after it nothing more is
		// delivered (the slot may be a standby's already).
		if err := ctx.Err(); err != nil {
			return err
		}
		var first batch
		var ok bool
		select {
		case first, ok = <-p.items:
			if !ok {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		batches := []batch{first}
		closed := false
		n, size := len(first.items), first.size
	gather:
		for n < maxGatherEvents && size < maxGatherBytes {
			select {
			case b, ok := <-p.items:
				if !ok {
					closed = true
					break gather
				}
				batches = append(batches, b)
				n += len(b.items)
				size += b.size
			default:
				break gather
			}
		}
		var items []work
		var evs []*decode.Event
		for _, b := range batches {
			items = append(items, b.items...)
			for _, w := range b.items {
				if w.item.Kind == decode.ItemEvent {
					evs = append(evs, w.item.Event)
				}
			}
		}
		// Settle events as their verdicts come, in order, and confirm each
		// transaction as soon as its last event is settled: a server that
		// waits for its WAL to be confirmed (a shutdown) is not held up by
		// the rest of the run.
		next := 0
		confirm := func() {
			for next < len(items) && items[next].item.Kind != decode.ItemEvent {
				if w := items[next]; w.keepalive != 0 {
					p.advance(w.keepalive)
				} else if w.item.Kind == decode.ItemCommit {
					p.advance(w.item.EndLSN)
				}
				next++
			}
		}
		confirm()
		var settleErr error
		if len(evs) > 0 {
			err := bs.PublishBatch(ctx, evs, func(_ int, err error) {
				if settleErr == nil {
					settleErr = p.settle(ctx, items[next].item.Event, err)
				}
				if settleErr == nil {
					next++
					confirm()
				}
			})
			if err != nil {
				return err
			}
		}
		if settleErr != nil {
			return settleErr
		}
		for _, b := range batches {
			if b.size > 0 {
				p.inflight.Add(-b.size)
			}
		}
		select {
		case p.freed <- struct{}{}:
		default:
		}
		if closed {
			return nil
		}
	}
}

func (p *publisher) deliver(ctx context.Context, ev *decode.Event) error {
	return p.settle(ctx, ev, p.a.cfg.Sink.Publish(ctx, ev))
}

// settle records the outcome of delivering ev: counted when accepted, kept
// as a dead letter when refused for good.
func (p *publisher) settle(ctx context.Context, ev *decode.Event, err error) error {
	if err == nil {
		p.a.m.EventsDelivered.WithLabelValues(ev.Table, ev.Operation, ev.Kind).Inc()
		p.a.m.CommitToAccepted.Observe(time.Since(ev.CommitTime).Seconds())
		p.a.m.LastCommitTime.Set(float64(ev.CommitTime.UnixMicro()) / 1e6)
		return nil
	}
	var rej *publish.RejectedError
	if !errors.As(err, &rej) || p.a.cfg.Spine == nil {
		return err
	}
	// Refused for good: keep it durably, then move on. Storing is retried
	// until it works; the event is never dropped.
	for attempt := 0; ; attempt++ {
		serr := p.dl.store(ctx, p.a.cfg.DatabaseURL, ev, rej)
		if serr == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := backoff.Delay(attempt, 500*time.Millisecond, 30*time.Second)
		p.a.m.Retries.WithLabelValues("dead_letter_store").Inc()
		p.a.log.Warn("storing a dead letter failed; retrying", "key", ev.Key, "err", serr, "wait", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	p.a.cfg.Spine.MarkKeyHandled(ev.Key)
	p.a.m.DeadLetters.WithLabelValues(ev.Table).Inc()
	p.a.log.Error("the spine refused an event; kept as a dead letter (see `pgaudit-cdc dead-letters list`)",
		"table", ev.Table, "operation", ev.Operation, "kind", ev.Kind, "key", ev.Key,
		"status", rej.StatusCode, "response", truncateString(rej.Body, 300))
	return nil
}

func truncateString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
