package agent

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
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
	rows, err := conn.Query(ctx, `SELECT idempotency_key FROM pgaudit_cdc.dead_letters
		WHERE slot_name = $1 AND left(idempotency_key, length($2)) = $2`, d.slot, keyPrefix)
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	return keys, nil
}

func (d *deadLetters) store(ctx context.Context, dsn string, ev *decode.Event, rej *publish.RejectedError) error {
	if d.conn == nil || d.conn.IsClosed() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return fmt.Errorf("connecting to store a dead letter: %w", err)
		}
		d.conn = conn
	}
	_, err := d.conn.Exec(ctx, `INSERT INTO pgaudit_cdc.dead_letters
			(idempotency_key, slot_name, commit_lsn, seq, table_name, operation, kind, source, envelope, status_code, response)
		VALUES ($1, $2, $3::text::pg_lsn, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (idempotency_key) DO NOTHING`,
		ev.Key, d.slot, ev.Pos.CommitLSN.String(), int64(ev.Pos.Seq), ev.Table, ev.Operation, ev.Kind, ev.Source,
		string(ev.Body), rej.StatusCode, rej.Body)
	if err != nil {
		return fmt.Errorf("storing a dead letter: %w", err)
	}
	return nil
}

func (d *deadLetters) close(ctx context.Context) {
	if d.conn != nil {
		d.conn.Close(ctx)
	}
}
