// Package deadletters owns pgaudit_cdc.dead_letters: the events the spine
// refused for good (400, 413, 422), kept durably so that the stream can move
// on without losing them, until an operator retries or discards them.
package deadletters

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Querier is a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Store is the dead letters of one slot.
type Store struct {
	q    Querier
	slot string
}

// New returns the store of slot on q.
func New(q Querier, slot string) *Store { return &Store{q: q, slot: slot} }

// Letter is one dead letter.
type Letter struct {
	ID        int64     `json:"id"`
	Key       string    `json:"idempotency_key"`
	CommitLSN string    `json:"commit_lsn"`
	Seq       int32     `json:"seq"`
	Table     string    `json:"table"`
	Operation string    `json:"operation"`
	Kind      string    `json:"kind"`
	Source    string    `json:"source"`
	Status    int32     `json:"status_code"`
	Response  string    `json:"response"`
	FailedAt  time.Time `json:"failed_at"`
	Envelope  string    `json:"-"`
	// CutOff says a retry started sending the letter and never learned the
	// spine's answer: the spine may still append it (see Sending).
	CutOff bool `json:"retry_cut_off,omitempty"`
}

// Put keeps ev, refused with status and body. Keeping it twice is a no-op.
func (s *Store) Put(ctx context.Context, ev *envelope.Event, status int, body string) error {
	_, err := s.q.Exec(ctx, `INSERT INTO pgaudit_cdc.dead_letters
			(idempotency_key, slot_name, commit_lsn, seq, table_name, operation, kind, source, envelope, status_code, response)
		VALUES ($1, $2, $3::text::pg_lsn, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (idempotency_key) DO NOTHING`,
		ev.Key, s.slot, ev.Pos.CommitLSN.String(), int64(ev.Pos.Seq), ev.Table, ev.Operation, ev.Kind, ev.Source,
		string(ev.Body), status, body)
	if err != nil {
		return fmt.Errorf("storing a dead letter: %w", err)
	}
	return nil
}

// Keys lists the idempotency keys kept for this slot that start with
// keyPrefix (one capture generation).
func (s *Store) Keys(ctx context.Context, keyPrefix string) ([]string, error) {
	rows, err := s.q.Query(ctx, `SELECT idempotency_key FROM pgaudit_cdc.dead_letters
		WHERE slot_name = $1 AND left(idempotency_key, length($2)) = $2`, s.slot, keyPrefix)
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	return keys, nil
}

// Positions maps every kept key to its position.
func (s *Store) Positions(ctx context.Context) (map[string]envelope.Position, error) {
	ls, err := s.List(ctx, nil)
	if err != nil {
		return nil, err
	}
	out := make(map[string]envelope.Position, len(ls))
	for _, l := range ls {
		lsn, err := pgoutput.ParseLSN(l.CommitLSN)
		if err != nil {
			return nil, err
		}
		out[l.Key] = envelope.Position{CommitLSN: lsn, Seq: uint32(l.Seq)}
	}
	return out, nil
}

// Count is how many are kept.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.q.QueryRow(ctx, `SELECT count(*) FROM pgaudit_cdc.dead_letters WHERE slot_name = $1`, s.slot).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting dead letters: %w", err)
	}
	return n, nil
}

// List returns the letters with the given IDs (all when ids is nil),
// oldest change first.
func (s *Store) List(ctx context.Context, ids []int64) ([]Letter, error) {
	rows, err := s.q.Query(ctx, `SELECT id, idempotency_key, commit_lsn::text, seq, table_name, operation, kind, source,
			status_code, response, failed_at, envelope, retry_started_at IS NOT NULL
		FROM pgaudit_cdc.dead_letters WHERE slot_name = $1 AND ($2::bigint[] IS NULL OR id = ANY($2))
		ORDER BY commit_lsn, seq`, s.slot, ids)
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	ls, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Letter, error) {
		var d Letter
		err := r.Scan(&d.ID, &d.Key, &d.CommitLSN, &d.Seq, &d.Table, &d.Operation, &d.Kind, &d.Source, &d.Status, &d.Response, &d.FailedAt, &d.Envelope, &d.CutOff)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading dead letters: %w", err)
	}
	return ls, nil
}

// Sending records that a retry starts sending letter id. Until its answer
// is recorded (RefusedAgain, Delivered) the letter reads as cut off: a retry
// that dies meanwhile leaves a request the spine may still append.
func (s *Store) Sending(ctx context.Context, id int64) error {
	if _, err := s.q.Exec(ctx, `UPDATE pgaudit_cdc.dead_letters SET retry_started_at = now() WHERE id = $1`, id); err != nil {
		return fmt.Errorf("recording the retry of dead letter %d: %w", id, err)
	}
	return nil
}

// RefusedAgain records a new refusal of letter id.
func (s *Store) RefusedAgain(ctx context.Context, id int64, status int, body string) error {
	if _, err := s.q.Exec(ctx, `UPDATE pgaudit_cdc.dead_letters SET status_code = $2, response = $3, failed_at = now(),
			retry_started_at = NULL
		WHERE id = $1`, id, status, body); err != nil {
		return fmt.Errorf("updating dead letter %d: %w", id, err)
	}
	return nil
}

// Delivered removes letter id, now in the spine.
func (s *Store) Delivered(ctx context.Context, id int64) error {
	if _, err := s.q.Exec(ctx, `DELETE FROM pgaudit_cdc.dead_letters WHERE id = $1`, id); err != nil {
		return fmt.Errorf("removing delivered dead letter %d: %w", id, err)
	}
	return nil
}

// Discard deletes the letters with the given IDs (all when ids is nil)
// without sending them, and says how many.
func (s *Store) Discard(ctx context.Context, ids []int64) (int64, error) {
	tag, err := s.q.Exec(ctx, `DELETE FROM pgaudit_cdc.dead_letters
		WHERE slot_name = $1 AND ($2::bigint[] IS NULL OR id = ANY($2))`, s.slot, ids)
	if err != nil {
		return 0, fmt.Errorf("discarding dead letters: %w", err)
	}
	return tag.RowsAffected(), nil
}
