package envelope

import (
	"fmt"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Gap is payload.gap of a GAP event: an accepted hole in the capture, and
// what an auditor needs to restore it from elsewhere.
type Gap struct {
	ID            int64         `json:"id"`
	Reason        string        `json:"reason"`
	Detail        string        `json:"detail"`
	DetectedAt    string        `json:"detected_at"`
	LastDelivered *GapDelivered `json:"last_delivered"`
	ResumeLSN     string        `json:"resume_lsn"`
	Tables        []string      `json:"tables"`
	SystemID      string        `json:"system_identifier"`
	Timeline      int32         `json:"timeline"`
	Generation    int           `json:"generation"`
	AcceptedBy    string        `json:"accepted_by"`
	Rebaseline    string        `json:"rebaseline"`
	Lost          *GapLostRange `json:"lost,omitempty"`
}

// GapDelivered is the last event of the old generation known to be in the
// trail: where the gap begins.
type GapDelivered struct {
	CommitLSN       string `json:"commit_lsn"`
	Seq             uint32 `json:"seq"`
	CommitTimestamp string `json:"commit_timestamp,omitempty"`
}

// GapLostRange names events the destination held and lost (a spine that
// lost or rewrote its history): the first and last idempotency key of the
// range and how many events it held, as the agent's anchors recorded them.
type GapLostRange struct {
	// FirstKey is the first event lost, when the destination lost the
	// trail from its start; After the last event it still holds otherwise.
	FirstKey string `json:"first_key,omitempty"`
	After    string `json:"after_key,omitempty"`
	LastKey  string `json:"last_key"`
	Count    uint64 `json:"count"`
}

// NewGapEvent builds the GAP event of an accepted gap: the first event of
// the new generation, keyed under keySlot at (resume, 0), ahead of every
// change the new slot delivers. Its key is stable for a given gap and slot
// position, so a GAP event re-sent after a crash is found by the read-back
// and not appended twice.
func NewGapEvent(systemID, keySlot string, resume pgoutput.LSN, g Gap, now time.Time) (*Event, error) {
	if g.Tables == nil {
		g.Tables = []string{}
	}
	js, err := Canonical(g)
	if err != nil {
		return nil, fmt.Errorf("BUG: encoding a gap: %w", err)
	}
	pos := Position{CommitLSN: resume}
	ev := &Event{
		Pos: pos, CommitTime: now,
		Envelope: Envelope{
			Kind: SelfAuditKind, Source: SelfAuditSource, Timestamp: FormatTimestamp(now),
			Table: "pgaudit_cdc.capture_state", Operation: OpGap,
			Fields:    []Field{{Name: "gap", Value: js}},
			CommitLSN: resume, LSN: resume, Key: Key(systemID, keySlot, pos),
		},
	}
	ev.Finish()
	return ev, nil
}
