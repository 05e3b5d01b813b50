package agent

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

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
