package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// Observe reads everything Assess needs except what only the replication
// protocol tells (the system identifier and timeline, from IDENTIFY_SYSTEM).
func Observe(ctx context.Context, conn *pgx.Conn, slot, systemID string, timeline int32) (Observation, error) {
	o := Observation{SystemID: systemID, Timeline: timeline}
	var err error
	if o.State, err = LoadState(ctx, conn, slot); err != nil {
		return o, err
	}
	if o.Slot, err = replication.LookupSlot(ctx, conn, slot); err != nil {
		return o, err
	}
	if o.Watermark, err = loadWatermark(ctx, conn, slot); err != nil {
		return o, err
	}
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgaudit_cdc.watches)
		OR EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches)`).Scan(&o.RegistryUsed); err != nil {
		return o, fmt.Errorf("reading the watch registry: %w", err)
	}
	return o, nil
}

// LoadState reads the recorded capture state of slot.
func LoadState(ctx context.Context, conn *pgx.Conn, slot string) (State, error) {
	var st State
	var start string
	err := conn.QueryRow(ctx, `SELECT system_identifier, timeline, generation, start_lsn::text
		FROM pgaudit_cdc.capture_state WHERE slot_name = $1`, slot).Scan(&st.SystemID, &st.Timeline, &st.Generation, &start)
	if errors.Is(err, pgx.ErrNoRows) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("reading the capture state: %w", err)
	}
	st.Known = true
	if st.StartLSN, err = pgoutput.ParseLSN(start); err != nil {
		return State{}, fmt.Errorf("reading the capture state: start_lsn: %w", err)
	}
	return st, nil
}

func loadWatermark(ctx context.Context, conn *pgx.Conn, slot string) (pgoutput.LSN, error) {
	var s string
	err := conn.QueryRow(ctx, `SELECT confirmed_lsn::text FROM pgaudit_cdc.slot_progress WHERE slot_name = $1`, slot).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the slot progress: %w", err)
	}
	return pgoutput.ParseLSN(s)
}

// SaveState records the capture state of slot (insert or replace).
func SaveState(ctx context.Context, q pgx.Tx, slot string, st State) error {
	_, err := q.Exec(ctx, `INSERT INTO pgaudit_cdc.capture_state (slot_name, system_identifier, timeline, generation, start_lsn)
		VALUES ($1, $2, $3, $4, $5::text::pg_lsn)
		ON CONFLICT (slot_name) DO UPDATE SET system_identifier = EXCLUDED.system_identifier,
			timeline = EXCLUDED.timeline, generation = EXCLUDED.generation,
			start_lsn = EXCLUDED.start_lsn, updated_at = now()`,
		slot, st.SystemID, st.Timeline, st.Generation, st.StartLSN.String())
	if err != nil {
		return fmt.Errorf("recording the capture state: %w", err)
	}
	return nil
}

// execer is a connection or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SaveProgress records lsn as the highest position confirmed to slot. It
// must be called before that position is sent to the server: a slot beyond
// the recorded progress was then moved by someone else. It never lowers the
// record.
func SaveProgress(ctx context.Context, conn execer, slot string, lsn pgoutput.LSN) error {
	_, err := conn.Exec(ctx, `INSERT INTO pgaudit_cdc.slot_progress (slot_name, confirmed_lsn) VALUES ($1, $2::text::pg_lsn)
		ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = greatest(pgaudit_cdc.slot_progress.confirmed_lsn, EXCLUDED.confirmed_lsn),
			updated_at = now()`, slot, lsn.String())
	if err != nil {
		return fmt.Errorf("recording the slot progress: %w", err)
	}
	return nil
}

// MarkBackfillsDelivered records that every READ event of the backfills
// ids was delivered (migration 0013).
func MarkBackfillsDelivered(ctx context.Context, conn execer, ids []int64) error {
	if _, err := conn.Exec(ctx, `UPDATE pgaudit_cdc.backfills SET delivered_at = now() WHERE id = ANY($1) AND delivered_at IS NULL`, ids); err != nil {
		return fmt.Errorf("recording delivered backfills: %w", err)
	}
	return nil
}

// resetProgress replaces the recorded progress (a new slot starts lower
// than the old one may have reached).
func resetProgress(ctx context.Context, q execer, slot string, lsn pgoutput.LSN) error {
	_, err := q.Exec(ctx, `INSERT INTO pgaudit_cdc.slot_progress (slot_name, confirmed_lsn) VALUES ($1, $2::text::pg_lsn)
		ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = EXCLUDED.confirmed_lsn, updated_at = now()`, slot, lsn.String())
	if err != nil {
		return fmt.Errorf("recording the slot progress: %w", err)
	}
	return nil
}

// GapRecord is one row of pgaudit_cdc.gaps.
type GapRecord struct {
	ID         int64      `json:"id"`
	Slot       string     `json:"slot"`
	Reason     string     `json:"reason"`
	Detail     string     `json:"detail"`
	DetectedAt time.Time  `json:"detected_at"`
	SystemID   string     `json:"system_identifier"`
	Timeline   int32      `json:"timeline"`
	Tables     []string   `json:"tables"`
	AcceptedAt *time.Time `json:"accepted_at,omitempty"`
	AcceptedBy string     `json:"accepted_by,omitempty"`
	ResumeLSN  string     `json:"resume_lsn,omitempty"`
	EventKey   string     `json:"event_key,omitempty"`
	// Lost names the events a destination lost (ReasonSpineHistoryLost).
	Lost *envelope.GapLostRange `json:"lost,omitempty"`
}

const gapColumns = `id, slot_name, reason, detail, detected_at, system_identifier, timeline, tables,
	accepted_at, coalesce(accepted_by, ''), coalesce(resume_lsn::text, ''), coalesce(event_key, ''), lost`

func scanGap(row pgx.Row) (GapRecord, error) {
	var g GapRecord
	var lost []byte
	err := row.Scan(&g.ID, &g.Slot, &g.Reason, &g.Detail, &g.DetectedAt, &g.SystemID, &g.Timeline, &g.Tables,
		&g.AcceptedAt, &g.AcceptedBy, &g.ResumeLSN, &g.EventKey, &lost)
	if err == nil && lost != nil {
		g.Lost = &envelope.GapLostRange{}
		if jerr := json.Unmarshal(lost, g.Lost); jerr != nil {
			return g, fmt.Errorf("reading gap #%d's lost range: %w", g.ID, jerr)
		}
	}
	return g, err
}

// PendingGap returns the gap of slot that awaits an operator, if any.
func PendingGap(ctx context.Context, conn *pgx.Conn, slot string) (*GapRecord, error) {
	g, err := scanGap(conn.QueryRow(ctx, `SELECT `+gapColumns+` FROM pgaudit_cdc.gaps
		WHERE slot_name = $1 AND accepted_at IS NULL`, slot))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading pending gaps: %w", err)
	}
	return &g, nil
}

// Gaps lists every gap of slot, newest first.
func Gaps(ctx context.Context, conn *pgx.Conn, slot string) ([]GapRecord, error) {
	rows, err := conn.Query(ctx, `SELECT `+gapColumns+` FROM pgaudit_cdc.gaps WHERE slot_name = $1 ORDER BY id DESC`, slot)
	if err != nil {
		return nil, fmt.Errorf("listing gaps: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (GapRecord, error) { return scanGap(r) })
	if err != nil {
		return nil, fmt.Errorf("listing gaps: %w", err)
	}
	return out, nil
}

// RecordGap records a detected gap unless one is already pending for the
// slot, and returns the pending gap and whether it is new. The first
// detection's reason is kept: it is the cause, later ones are consequences.
func RecordGap(ctx context.Context, conn *pgx.Conn, slot string, a Assessment, systemID string, timeline int32) (*GapRecord, bool, error) {
	return recordGap(ctx, conn, slot, a, systemID, timeline, nil)
}

func recordGap(ctx context.Context, conn *pgx.Conn, slot string, a Assessment, systemID string, timeline int32, lost []byte) (*GapRecord, bool, error) {
	tables, err := AffectedTables(ctx, conn)
	if err != nil {
		return nil, false, err
	}
	g, err := scanGap(conn.QueryRow(ctx, `INSERT INTO pgaudit_cdc.gaps (slot_name, reason, detail, system_identifier, timeline, tables, lost)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (slot_name) WHERE accepted_at IS NULL DO NOTHING
		RETURNING `+gapColumns, slot, a.Reason, a.Detail, systemID, timeline, tables, lost))
	if err == nil {
		return &g, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, false, fmt.Errorf("recording the gap: %w", err)
	}
	pending, err := PendingGap(ctx, conn, slot)
	if err != nil {
		return nil, false, err
	}
	if pending == nil {
		return nil, false, errors.New("recording the gap: a pending gap was accepted concurrently; try again")
	}
	return pending, false, nil
}

// AffectedTables lists what the active watches cover: tables as
// schema.table, schema-wide watches as schema.* (quoted as events name them).
func AffectedTables(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT schema_name, table_name FROM pgaudit_cdc.watches WHERE active
		UNION ALL SELECT schema_name, NULL FROM pgaudit_cdc.schema_watches WHERE active ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("listing watched tables: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var schema string
		var table *string
		if err := r.Scan(&schema, &table); err != nil {
			return "", err
		}
		if table == nil {
			return ident.Quote(schema) + ".*", nil
		}
		return ident.Qualified(schema, *table), nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing watched tables: %w", err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}
