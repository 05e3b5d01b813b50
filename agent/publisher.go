package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
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

func (p *publisher) run(ctx context.Context) error {
	defer p.dl.close(context.WithoutCancel(ctx))
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
func (p *publisher) advance(lsn decode.LSN) {
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

func (p *publisher) deliver(ctx context.Context, ev *decode.Event) error {
	err := p.a.cfg.Sink.Publish(ctx, ev)
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
		wait := publish.Backoff(attempt, 500*time.Millisecond, 30*time.Second)
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
	p.a.cfg.Spine.MarkHandled(ev.Pos)
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
