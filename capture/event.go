package capture

import (
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// Delivered is the last event of the old generation known to be in the
// spine: where the gap begins.
type Delivered struct {
	Position   envelope.Position
	CommitTime string // ISO 8601, as the events carry it; empty when unknown
}

// GapEvent builds the GAP event of an accepted gap g in the new generation
// st (envelope.NewGapEvent).
func GapEvent(g *GapRecord, st State, slot string, last *Delivered, acceptedBy string, now time.Time) (*envelope.Event, error) {
	d := envelope.Gap{
		ID: g.ID, Reason: g.Reason, Detail: g.Detail, DetectedAt: envelope.FormatTimestamp(g.DetectedAt),
		ResumeLSN: st.StartLSN.String(), Tables: g.Tables, SystemID: st.SystemID, Timeline: st.Timeline,
		Generation: st.Generation, AcceptedBy: acceptedBy, Lost: g.Lost,
		Rebaseline: "changes to these tables between last_delivered and resume_lsn are not in the audit trail: run `pgaudit-cdc backfill TABLE` for each to record their current rows",
	}
	if g.Reason == ReasonSpineHistoryLost {
		d.Rebaseline = "the destination lost the events named in lost, which the agent had delivered and sealed: restore them from a copy of the trail taken before the loss (the seals in it prove them), or re-baseline each table listed with `pgaudit-cdc backfill TABLE`"
	}
	if last != nil && !last.Position.IsZero() {
		d.LastDelivered = &envelope.GapDelivered{CommitLSN: last.Position.CommitLSN.String(), Seq: last.Position.Seq, CommitTimestamp: last.CommitTime}
	}
	return envelope.NewGapEvent(st.SystemID, KeySlot(slot, st.Generation), st.StartLSN, d, now)
}
