package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgaudit-cdc/pgaudit-cdc/confirm"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// publisher delivers work items in order and accepts (confirm.Tracker) the
// end of each transaction once all its events are settled.
type publisher struct {
	a        *Agent
	items    <-chan batch
	freed    chan<- struct{}
	spare    chan<- []work // batch storage given back to the reader
	confirm  *confirm.Tracker
	inflight *atomic.Int64
	dl       *deadLetters
	seals    *sealing // nil: unsigned

	// delivered caches EventsDelivered's counter per table, operation and
	// kind: WithLabelValues hashes and checks three strings under a lock,
	// once per event.
	delivered map[deliveredLabels]prometheus.Counter
}

type deliveredLabels struct{ table, operation, kind string }

// batchSink delivers many events in order with several in flight
// (publish.Client.PublishBatch): done is called once per event, in order.
type batchSink interface {
	PublishBatch(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error
}

// Most events gathered from several hand-overs into one pipelined delivery.
const (
	maxGatherEvents = 2048
	maxGatherBytes  = 8 << 20
)

func (p *publisher) run(ctx context.Context) error {
	defer p.dl.close(context.WithoutCancel(ctx))
	defer p.seals.close(context.WithoutCancel(ctx))
	if bs, ok := p.a.cfg.Sink.(batchSink); ok {
		return p.runBatched(ctx, bs)
	}
	for {
		b, ok, err := p.next(ctx)
		if err != nil || !ok {
			return err
		}
		for _, w := range b.items {
			if err := p.process(ctx, w); err != nil {
				return err
			}
		}
		if err := p.sealIfDue(ctx, false); err != nil {
			return err
		}
		if b.size > 0 {
			p.inflight.Add(-b.size)
		}
		p.recycle(b.items)
		select {
		case p.freed <- struct{}{}:
		default:
		}
	}
}

func (p *publisher) process(ctx context.Context, w work) error {
	switch {
	case w.keepalive != 0:
		p.accept(w.keepalive)
	case w.item.Kind == decode.ItemCommit:
		p.accept(w.item.EndLSN)
	case w.item.Kind == decode.ItemEvent:
		return p.deliver(ctx, w.item.Event)
	}
	return nil
}

// next waits for the reader's next hand-over. While events wait for their
// seal, it seals them once no work came for a while (Config.SealIdle). ok is
// false once the reader closed the channel: what is pending is sealed then.
func (p *publisher) next(ctx context.Context) (b batch, ok bool, err error) {
	for {
		var idle <-chan time.Time
		if p.seals != nil {
			idle = p.seals.idle()
		}
		select {
		case b, ok = <-p.items:
			if !ok {
				return b, false, p.sealIfDue(ctx, true)
			}
			return b, true, nil
		case <-idle:
			if err := p.sealIfDue(ctx, true); err != nil {
				return b, false, err
			}
		case <-ctx.Done():
			return b, false, ctx.Err()
		}
	}
}

// sealIfDue seals the events settled so far when they are due (or force),
// and accepts the transactions the seal completes.
func (p *publisher) sealIfDue(ctx context.Context, force bool) error {
	if p.seals == nil || (!force && !p.seals.due(time.Now())) {
		return nil
	}
	held, err := p.seals.seal(ctx)
	if err != nil {
		return err
	}
	if held != 0 {
		p.accept(held)
	}
	return nil
}

// accept raises the accepted LSN (it never goes back) and the
// ConfirmedLSN metric with it. With a signed trail, a position after events
// not sealed yet waits for their seal (see sealing.hold).
func (p *publisher) accept(lsn pgoutput.LSN) {
	if p.seals != nil {
		var ok bool
		if lsn, ok = p.seals.hold(lsn); !ok {
			return
		}
	}
	if p.confirm.Accept(lsn) {
		p.a.m.ConfirmedLSN.Set(float64(lsn))
	}
}

// runBatched takes what the reader handed over, and whatever else is
// already waiting, and delivers the events in one pipelined run: under load,
// many small transactions share the window. Acknowledgements follow in order
// once every event before them is settled.
func (p *publisher) runBatched(ctx context.Context, bs batchSink) error {
	// Kept from run to run: under load a run is every millisecond or so,
	// and fresh slices each time were half of what the agent allocated.
	var batches []batch
	var evs []*envelope.Event
	for {
		// A stop request wins over waiting work: after it nothing more is
		// delivered (the slot may be a standby's already).
		if err := ctx.Err(); err != nil {
			return err
		}
		first, ok, err := p.next(ctx)
		if err != nil || !ok {
			return err
		}
		var closed bool
		batches, closed = p.gather(batches, first)
		evs = evs[:0]
		for _, b := range batches {
			for i := range b.items {
				if b.items[i].item.Kind == decode.ItemEvent {
					evs = append(evs, b.items[i].item.Event)
				}
			}
		}
		if err := p.deliverRun(ctx, bs, batches, evs); err != nil {
			return err
		}
		clear(evs)
		for i, b := range batches {
			if b.size > 0 {
				p.inflight.Add(-b.size)
			}
			p.recycle(b.items)
			batches[i] = batch{}
		}
		select {
		case p.freed <- struct{}{}:
		default:
		}
		if closed {
			return p.sealIfDue(ctx, true)
		}
		if err := p.sealIfDue(ctx, false); err != nil {
			return err
		}
	}
}

// gather returns first and whatever else the reader already handed over, up
// to maxGatherEvents and maxGatherBytes, in batches' storage; closed says
// the reader closed the channel.
func (p *publisher) gather(batches []batch, first batch) (_ []batch, closed bool) {
	batches = append(batches[:0], first)
	n, size := len(first.items), first.size
	for n < maxGatherEvents && size < maxGatherBytes {
		select {
		case b, ok := <-p.items:
			if !ok {
				return batches, true
			}
			batches = append(batches, b)
			n += len(b.items)
			size += b.size
		default:
			return batches, false
		}
	}
	return batches, false
}

// deliverRun delivers evs, the events of batches, in one pipelined run.
// Events are settled as their verdicts come, in order, and each transaction
// is accepted as soon as its last event is settled: a server that waits for
// its WAL to be confirmed (a shutdown) is not held up by the rest of the
// run.
func (p *publisher) deliverRun(ctx context.Context, bs batchSink, batches []batch, evs []*envelope.Event) error {
	// at walks the items of every batch in order.
	at := itemCursor{batches: batches}
	acceptSettled := func() {
		for w := at.work(); w != nil && w.item.Kind != decode.ItemEvent; w = at.next() {
			if w.keepalive != 0 {
				p.accept(w.keepalive)
			} else if w.item.Kind == decode.ItemCommit {
				p.accept(w.item.EndLSN)
			}
		}
	}
	acceptSettled()
	if len(evs) == 0 {
		return nil
	}
	var settleErr error
	err := bs.PublishBatch(ctx, evs, func(_ int, err error) {
		if settleErr == nil {
			settleErr = p.settle(ctx, at.work().item.Event, err)
		}
		if settleErr == nil {
			at.next()
			acceptSettled()
		}
	})
	if err != nil {
		return err
	}
	return settleErr
}

// itemCursor walks the items of a run of batches in order.
type itemCursor struct {
	batches []batch
	b, i    int
}

// work is the current item, nil past the last.
func (c *itemCursor) work() *work {
	for c.b < len(c.batches) && c.i >= len(c.batches[c.b].items) {
		c.b, c.i = c.b+1, 0
	}
	if c.b >= len(c.batches) {
		return nil
	}
	return &c.batches[c.b].items[c.i]
}

// next moves on and returns the new current item.
func (c *itemCursor) next() *work {
	if c.work() != nil {
		c.i++
	}
	return c.work()
}

// recycle hands a delivered batch's storage back to the reader (see
// reader.flush), emptied so that it keeps no event alive.
func (p *publisher) recycle(items []work) {
	if p.spare == nil || cap(items) == 0 {
		return
	}
	clear(items)
	select {
	case p.spare <- items[:0]:
	default:
	}
}

func (p *publisher) deliver(ctx context.Context, ev *envelope.Event) error {
	return p.settle(ctx, ev, p.a.cfg.Sink.Publish(ctx, ev))
}

// settle records the outcome of delivering ev: counted when accepted, kept
// as a dead letter when refused for good.
func (p *publisher) settle(ctx context.Context, ev *envelope.Event, err error) error {
	if err == nil {
		l := deliveredLabels{ev.Table, ev.Operation, ev.Kind}
		c, ok := p.delivered[l]
		if !ok {
			if p.delivered == nil {
				p.delivered = map[deliveredLabels]prometheus.Counter{}
			}
			c = p.a.m.EventsDelivered.WithLabelValues(l.table, l.operation, l.kind)
			p.delivered[l] = c
		}
		c.Inc()
		p.a.m.CommitToAccepted.Observe(time.Since(ev.CommitTime).Seconds())
		p.a.m.LastCommitTime.Set(float64(ev.CommitTime.UnixMicro()) / 1e6)
		if p.seals != nil {
			p.seals.fold(ev, false)
		}
		return nil
	}
	var rej *publish.RejectedError
	if !errors.As(err, &rej) || p.a.cfg.Spine == nil {
		return err
	}
	// Refused for good: keep it durably, then move on.
	if err := p.a.keepRefused(ctx, p.dl, ev, rej, ""); err != nil {
		return err
	}
	if p.seals != nil {
		p.seals.fold(ev, true)
	}
	return nil
}
