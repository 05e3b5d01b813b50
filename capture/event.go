package capture

import (
	"encoding/json"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
)

// OpGap is the operation of the event that records a gap.
const OpGap = "GAP"

// Delivered is the last event of the old generation known to be in the
// spine: where the gap begins.
type Delivered struct {
	Position   decode.Position
	CommitTime string // ISO 8601, as the events carry it; empty when unknown
}

// gapBody is the envelope, in the field order consumers see.
type gapBody struct {
	Kind      string     `json:"kind"`
	Source    string     `json:"source"`
	Timestamp string     `json:"timestamp"`
	Payload   gapPayload `json:"payload"`
}

type gapPayload struct {
	Table     string      `json:"table"`
	Operation string      `json:"operation"`
	Gap       gapDetail   `json:"gap"`
	Metadata  gapMetadata `json:"metadata"`
}

type gapDetail struct {
	ID            int64          `json:"id"`
	Reason        string         `json:"reason"`
	Detail        string         `json:"detail"`
	DetectedAt    string         `json:"detected_at"`
	LastDelivered *lastDelivered `json:"last_delivered"`
	ResumeLSN     string         `json:"resume_lsn"`
	Tables        []string       `json:"tables"`
	SystemID      string         `json:"system_identifier"`
	Timeline      int32          `json:"timeline"`
	Generation    int            `json:"generation"`
	AcceptedBy    string         `json:"accepted_by"`
	Rebaseline    string         `json:"rebaseline"`
}

type lastDelivered struct {
	CommitLSN       string `json:"commit_lsn"`
	Seq             uint32 `json:"seq"`
	CommitTimestamp string `json:"commit_timestamp,omitempty"`
}

type gapMetadata struct {
	CommitLSN      string `json:"commit_lsn"`
	LSN            string `json:"lsn"`
	IdempotencyKey string `json:"idempotency_key"`
}

// GapEvent builds the GAP event of an accepted gap: the first event of the
// new generation st, at position (st.StartLSN, 0), ahead of every change
// the new slot delivers. Its idempotency key is stable for a given gap and
// slot position, so a GAP event re-sent after a crash is found in the spine
// and not appended twice.
func GapEvent(g *GapRecord, st State, slot string, last *Delivered, acceptedBy string, now time.Time) *decode.Event {
	pos := decode.Position{CommitLSN: st.StartLSN}
	key := decode.Key(st.SystemID, KeySlot(slot, st.Generation), pos)
	ts := decode.FormatTimestamp(now)
	d := gapDetail{
		ID: g.ID, Reason: g.Reason, Detail: g.Detail, DetectedAt: decode.FormatTimestamp(g.DetectedAt),
		ResumeLSN: st.StartLSN.String(), Tables: g.Tables, SystemID: st.SystemID, Timeline: st.Timeline,
		Generation: st.Generation, AcceptedBy: acceptedBy,
		Rebaseline: "changes to these tables between last_delivered and resume_lsn are not in the audit trail: run `pgaudit-cdc backfill TABLE` for each to record their current rows",
	}
	if d.Tables == nil {
		d.Tables = []string{}
	}
	if last != nil && !last.Position.IsZero() {
		d.LastDelivered = &lastDelivered{CommitLSN: last.Position.CommitLSN.String(), Seq: last.Position.Seq, CommitTimestamp: last.CommitTime}
	}
	body, _ := json.Marshal(gapBody{ // cannot fail: strings, numbers and slices only
		Kind: decode.SelfAuditKind, Source: decode.SelfAuditSource, Timestamp: ts,
		Payload: gapPayload{Table: "pgaudit_cdc.capture_state", Operation: OpGap, Gap: d,
			Metadata: gapMetadata{CommitLSN: st.StartLSN.String(), LSN: st.StartLSN.String(), IdempotencyKey: key}},
	})
	return &decode.Event{
		Body: body, Key: key, Pos: pos, LSN: st.StartLSN,
		Kind: decode.SelfAuditKind, Source: decode.SelfAuditSource, Table: "pgaudit_cdc.capture_state",
		Operation: OpGap, CommitTime: now,
	}
}
