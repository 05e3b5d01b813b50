package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// deadLetters writes refused events to pgaudit_cdc.dead_letters on a
// connection of the publisher's own, opened on first use.
type deadLetters struct {
	slot string
	conn *pgx.Conn
}

func newDeadLetters(slot string) *deadLetters { return &deadLetters{slot: slot} }

// maxPosition is the highest position kept as a dead letter for this slot
// and key prefix (the capture generation): everything up to it was handled
// before a restart. Dead letters of an older generation belong to another WAL
// history and say nothing about this one.
func (d *deadLetters) maxPosition(ctx context.Context, conn *pgx.Conn, keyPrefix string) (decode.Position, error) {
	var lsn *string
	var seq *int64
	err := conn.QueryRow(ctx, `SELECT commit_lsn::text, seq FROM pgaudit_cdc.dead_letters
		WHERE slot_name = $1 AND left(idempotency_key, length($2)) = $2
		ORDER BY commit_lsn DESC, seq DESC LIMIT 1`, d.slot, keyPrefix).Scan(&lsn, &seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return decode.Position{}, nil
	}
	if err != nil {
		return decode.Position{}, fmt.Errorf("reading dead letters: %w", err)
	}
	commit, err := replication.ParseLSN(*lsn)
	if err != nil {
		return decode.Position{}, fmt.Errorf("reading dead letters: %w", err)
	}
	return decode.Position{CommitLSN: commit, Seq: uint32(*seq)}, nil
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
