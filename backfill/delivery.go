package backfill

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// A backfill is done when its READ events are delivered, not when its
// chunks are in the WAL: its last chunk says it is the last, and the agent
// sets delivered_at once the destination accepted every event up to that
// chunk's transaction. end_lsn, the WAL insert position after the last
// chunk, measures what is still to go.

// Pending is a backfill whose READ events are not all delivered yet.
type Pending struct {
	ID       int64        `json:"id"`
	Table    string       `json:"table"`
	TableOID uint32       `json:"-"`
	Rows     int64        `json:"rows"`
	Written  bool         `json:"written"` // every chunk is in the WAL; false: interrupted, `backfill` resumes it
	EndLSN   pgoutput.LSN `json:"-"`
}

// State names where the backfill stands.
func (p Pending) State() string {
	if p.Written {
		return "delivering"
	}
	return "interrupted"
}

// ListPending returns the backfills the agent of slot has not delivered
// yet, oldest first: those interrupted while writing chunks, and those
// written but not delivered. One whose end lies before the start of the
// slot's capture generation was lost in an accepted gap (the GAP event
// asks for a new backfill) and is not pending.
func ListPending(ctx context.Context, conn *pgx.Conn, slot string) ([]Pending, error) {
	rows, err := conn.Query(ctx, `SELECT b.id, b.table_name, b.table_oid, b.rows_done, b.finished_at IS NOT NULL, coalesce(b.end_lsn::text, '')
		FROM pgaudit_cdc.backfills b
		LEFT JOIN pgaudit_cdc.capture_state cs ON cs.slot_name = $1
		WHERE b.finished_at IS NULL
		   OR (b.delivered_at IS NULL AND NOT coalesce(b.end_lsn < cs.start_lsn, false))
		ORDER BY b.id`, slot)
	if err != nil {
		return nil, fmt.Errorf("reading pending backfills: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Pending, error) {
		var p Pending
		var end string
		if err := r.Scan(&p.ID, &p.Table, &p.TableOID, &p.Rows, &p.Written, &end); err != nil {
			return p, err
		}
		if end != "" {
			var err error
			if p.EndLSN, err = pgoutput.ParseLSN(end); err != nil {
				return p, fmt.Errorf("backfill %d: %w", p.ID, err)
			}
		}
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading pending backfills: %w", err)
	}
	return out, nil
}

// Delivery is how far the delivery of a backfill got.
type Delivery struct {
	End, Confirmed pgoutput.LSN
	AgentConnected bool
}

// ToGo is the WAL between the slot's confirmed position and the backfill's
// end, in bytes.
func (d Delivery) ToGo() uint64 {
	if d.Confirmed >= d.End {
		return 0
	}
	return uint64(d.End - d.Confirmed)
}

// WaitDelivered waits until the agent of slot has delivered backfill id:
// every READ event of it was accepted by the destination. It gives up,
// returning false, once no agent has streamed the slot for idle (none is
// running: delivery waits for one). progress is called at every look.
func WaitDelivered(ctx context.Context, conn *pgx.Conn, slot string, id int64, end pgoutput.LSN, idle time.Duration, progress func(Delivery)) (bool, error) {
	var idleSince time.Time
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		var delivered bool
		if err := conn.QueryRow(ctx, `SELECT delivered_at IS NOT NULL FROM pgaudit_cdc.backfills WHERE id = $1`, id).Scan(&delivered); err != nil {
			return false, fmt.Errorf("reading the delivery of backfill %d: %w", id, err)
		}
		if delivered {
			return true, nil
		}
		s, err := replication.LookupSlot(ctx, conn, slot)
		if err != nil {
			return false, err
		}
		d := Delivery{End: end, Confirmed: s.ConfirmedFlushLSN, AgentConnected: s.Active}
		if progress != nil {
			progress(d)
		}
		switch {
		case s.Active:
			idleSince = time.Time{}
		case idleSince.IsZero():
			idleSince = time.Now()
		case time.Since(idleSince) >= idle:
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
	}
}
