// Package capture guards the continuity of the audit trail: it decides, each
// time capture starts, whether the replication slot can still deliver every
// change after what the spine already holds, and when it cannot, it records a
// gap instead of carrying on as if nothing happened.
//
// A logical replication slot is the only record of where capture stands. When
// it is dropped, invalidated (max_slot_wal_keep_size), left behind by a
// failover or a restore, or advanced by someone else, the changes it no
// longer holds are gone. Re-creating the slot silently would start a new
// history that looks complete in the spine's hash chain. So a slot is created
// only when no capture has happened yet, or after an operator accepted the
// gap; the gap itself becomes one GAP event in the chain.
//
// Assess is the pure decision; the rest of the package reads and writes the
// state it decides on (pgaudit_cdc.capture_state, slot_progress and gaps).
package capture

import (
	"fmt"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// Reasons a gap is recorded with, as they appear in the GAP event, the
// metrics and pgaudit_cdc.gaps.
const (
	ReasonSlotMissing     = "slot_missing"
	ReasonSlotInvalidated = "slot_invalidated"
	ReasonSystemChanged   = "system_identifier_changed"
	ReasonTimelineChanged = "timeline_changed"
	ReasonSlotAdvanced    = "slot_advanced"
	ReasonNoSlotForWatch  = "capture_started_without_slot"
	ReasonTimelineForked  = "timeline_forked"
)

// State is what pgaudit_cdc.capture_state remembers of a slot.
type State struct {
	Known      bool // a row exists
	SystemID   string
	Timeline   int32
	Generation int
	StartLSN   pgoutput.LSN
}

// Observation is everything Assess looks at.
type Observation struct {
	// SystemID and Timeline are the server's, from IDENTIFY_SYSTEM.
	SystemID string
	Timeline int32
	State    State
	Slot     replication.SlotInfo
	// Watermark is the highest LSN this agent ever confirmed to the slot
	// (pgaudit_cdc.slot_progress); zero when unknown (after a crash of the
	// server, or on a promoted standby: the table is unlogged).
	Watermark pgoutput.LSN
	// RegistryUsed says watches were ever registered: capture started.
	RegistryUsed bool

	// For a failover slot on a new timeline (see Options.Fork): ForkChecked
	// says SwitchPoint and Delivered were learnt. SwitchPoint is where the
	// recorded timeline ended in the server's history; Delivered is the
	// commit position of the last event the spine holds for the current
	// generation (zero: none).
	ForkChecked bool
	SwitchPoint pgoutput.LSN
	Delivered   pgoutput.LSN
}

// Verdict is what capture may do.
type Verdict int

// Verdicts.
const (
	// Create: nothing was ever captured; create the slot and the state.
	Create Verdict = iota + 1
	// Adopt: a slot exists but no state was recorded (an installation from
	// before capture state existed): record the slot as it is.
	Adopt
	// Continue: the slot continues the recorded history.
	Continue
	// Gap: the slot cannot deliver everything after what was captured.
	Gap
)

func (v Verdict) String() string {
	switch v {
	case Create:
		return "create"
	case Adopt:
		return "adopt"
	case Continue:
		return "continue"
	case Gap:
		return "gap"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Assessment is Assess's answer.
type Assessment struct {
	Verdict Verdict
	// Reason and Detail explain a gap (Reason is one of the Reason*
	// constants; Detail is a sentence for people).
	Reason string
	Detail string
	// RecreateSlot says that accepting the gap means dropping (if present)
	// and creating the slot: it is missing or can no longer stream.
	RecreateSlot bool
	// TimelineMoved says a failover slot continues on a new timeline (a
	// promoted standby that had the slot synced): record the new timeline.
	TimelineMoved bool
	// AdvanceTo, when set, is where accepting the gap moves the slot first:
	// the switch point of a forked history, up to which the chain already
	// holds every change (the WAL before it is shared by both timelines).
	AdvanceTo pgoutput.LSN
}

// Assess decides whether the slot continues the recorded capture. It is pure:
// every input is in o.
func Assess(o Observation) Assessment {
	gap := func(reason, detail string, recreate bool) Assessment {
		return Assessment{Verdict: Gap, Reason: reason, Detail: detail, RecreateSlot: recreate}
	}
	if o.Slot.Invalidated() {
		why := o.Slot.InvalidationReason
		if why == "" {
			why = "wal_status " + o.Slot.WALStatus
		}
		return gap(ReasonSlotInvalidated, fmt.Sprintf("the replication slot was invalidated (%s): the WAL it needed was removed, so the changes since %s cannot be decoded any more", why, o.Slot.ConfirmedFlushLSN), true)
	}
	if !o.State.Known {
		switch {
		case o.Slot.Exists:
			return Assessment{Verdict: Adopt}
		case o.RegistryUsed:
			return gap(ReasonNoSlotForWatch, "watches are registered but the replication slot does not exist and no capture state was recorded: changes made since the watches were created were not retained", true)
		default:
			return Assessment{Verdict: Create}
		}
	}
	if o.State.SystemID != o.SystemID {
		return gap(ReasonSystemChanged, fmt.Sprintf("the database cluster changed (system identifier %s, captured from %s): it was restored or copied to another cluster, and changes made on the old one after the last delivered event are not in this one's WAL", o.SystemID, o.State.SystemID), !o.Slot.Exists)
	}
	if !o.Slot.Exists {
		if o.Timeline != o.State.Timeline {
			return gap(ReasonTimelineChanged, fmt.Sprintf("the server is on timeline %d, capture was on %d, and the replication slot did not come along: a standby was promoted or a backup restored without the slot, and the changes since the last delivered event cannot be decoded", o.Timeline, o.State.Timeline), true)
		}
		return gap(ReasonSlotMissing, "the replication slot was dropped: changes committed since it was dropped, and any it had not delivered yet, are not retained", true)
	}
	if o.Timeline != o.State.Timeline {
		if o.Slot.Failover {
			if o.ForkChecked && o.Delivered != 0 && o.SwitchPoint == 0 {
				return gap(ReasonTimelineForked, fmt.Sprintf("the server's timeline history (timeline %d) does not pass through timeline %d, where capture was: it was restored onto another branch of the history, and the events delivered up to commit position %s cannot be matched with its WAL", o.Timeline, o.State.Timeline, o.Delivered), false)
			}
			if o.ForkChecked && o.Delivered != 0 && o.Delivered >= o.SwitchPoint {
				a := gap(ReasonTimelineForked, fmt.Sprintf("the database failed over (timeline %d to %d) to a standby that had not received everything the old primary sent to pgaudit-cdc: the audit trail holds events up to commit position %s, beyond %s where the new primary's history begins, so those changes are not in the new primary's database, and its own changes from %s on would share their positions; set synchronized_standby_slots on the primary to the standby's physical slot so that this cannot happen again", o.State.Timeline, o.Timeline, o.Delivered, o.SwitchPoint, o.SwitchPoint), false)
				a.AdvanceTo = o.SwitchPoint
				return a
			}
			return Assessment{Verdict: Continue, TimelineMoved: true}
		}
		return gap(ReasonTimelineChanged, fmt.Sprintf("the server is on timeline %d, capture was on %d, and the slot here is not a failover slot synchronised from the old primary: changes between the last delivered event and the promotion may be missing", o.Timeline, o.State.Timeline), false)
	}
	if o.Watermark != 0 && o.Slot.ConfirmedFlushLSN > o.Watermark {
		return gap(ReasonSlotAdvanced, fmt.Sprintf("the replication slot's confirmed position %s is beyond the highest position pgaudit-cdc ever confirmed (%s): the slot was advanced, consumed by another client or re-created, and the changes in between were never delivered", o.Slot.ConfirmedFlushLSN, o.Watermark), false)
	}
	return Assessment{Verdict: Continue}
}

// KeySlot is the slot part of idempotency keys for a capture generation:
// the slot name, then ".g<N>" after the Nth accepted gap. A new generation
// reads a new WAL history whose positions may repeat old ones; its keys never
// collide with the old ones, and the spine read-back learns its high-water
// mark from its own generation only. Slot names hold no dots.
func KeySlot(slot string, generation int) string {
	if generation <= 0 {
		return slot
	}
	return fmt.Sprintf("%s.g%d", slot, generation)
}
