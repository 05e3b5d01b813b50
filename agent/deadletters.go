package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// deadLetters writes refused events to pgaudit_cdc.dead_letters on a
// connection of the publisher's own, opened on first use.
type deadLetters struct {
	slot string
	conn *pgx.Conn
}

func newDeadLetters(slot string) *deadLetters { return &deadLetters{slot: slot} }

// keys lists the idempotency keys kept as dead letters for this slot and
// key prefix (the capture generation): those events were handled before a
// restart, and their replays are not sent. Dead letters of an older
// generation belong to another WAL history and say nothing about this one.
func (d *deadLetters) keys(ctx context.Context, conn *pgx.Conn, keyPrefix string) ([]string, error) {
	return deadletters.New(conn, d.slot).Keys(ctx, keyPrefix)
}

func (d *deadLetters) store(ctx context.Context, dsn string, ev *envelope.Event, rej *publish.RejectedError) error {
	if d.conn == nil || d.conn.IsClosed() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return fmt.Errorf("connecting to store a dead letter: %w", err)
		}
		d.conn = conn
	}
	return deadletters.New(d.conn, d.slot).Put(ctx, ev, rej.StatusCode, rej.Body)
}

func (d *deadLetters) close(ctx context.Context) {
	if d.conn != nil {
		d.conn.Close(ctx)
	}
}

// keepRefused keeps an event the spine refused for good as a dead letter,
// retrying the store until it works or ctx ends (the event is never
// dropped), marks it handled, counts it and logs it with what follows from
// the refusal (consequence).
func (a *Agent) keepRefused(ctx context.Context, d *deadLetters, ev *envelope.Event, rej *publish.RejectedError, consequence string) error {
	for attempt := 0; ; attempt++ {
		serr := d.store(ctx, a.cfg.DatabaseURL, ev, rej)
		if serr == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := backoff.Delay(attempt, 500*time.Millisecond, 30*time.Second)
		a.m.Retries.WithLabelValues("dead_letter_store").Inc()
		a.log.Warn("storing a dead letter failed; retrying", "key", ev.Key, "err", serr, "wait", wait.Round(time.Millisecond))
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
	}
	a.cfg.Spine.MarkKeyHandled(ev.Key)
	a.m.DeadLetters.WithLabelValues(ev.Table).Inc()
	a.log.Error("the spine refused an event; kept as a dead letter (see `pgaudit-cdc dead-letters list`)"+consequence,
		"table", ev.Table, "operation", ev.Operation, "kind", ev.Kind, "key", ev.Key,
		"status", rej.StatusCode, "response", publish.Truncate(rej.Body, 300))
	return nil
}
