package capture

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// AcceptAny, as Options.Accept, accepts whichever gap was pending before
// Ensure looked: never one it records itself, which no operator has seen.
const AcceptAny = "any"

// Options configure Ensure.
type Options struct {
	Slot string
	// SystemID and Timeline are the server's (IDENTIFY_SYSTEM).
	SystemID string
	Timeline int32
	// Accept is the operator's consent to continue past a gap: "" (none),
	// AcceptAny, or the ID of the gap being accepted.
	Accept string
	// Fork, when set, is asked when a failover slot continues on a new
	// timeline: where the recorded timeline ended in the server's history,
	// and the commit position of the last event the spine holds for the
	// recorded generation. Events beyond the switch point came from the old
	// primary's own history (a standby that had not received them was
	// promoted): a fork, recorded as a gap. Without Fork (the watch command)
	// a timeline move is left for run to settle: it is not recorded.
	Fork func(ctx context.Context, st State) (switchPoint, delivered pgoutput.LSN, err error)
}

// Result is what Ensure found and did.
type Result struct {
	// State is the capture state to stream with. After an accepted gap it
	// is the new generation's, not yet saved: Complete saves it once the GAP
	// event is delivered.
	State State
	// Previous is the state before an accepted gap (whose keys name the
	// last delivered events).
	Previous State
	Slot     replication.SlotInfo
	// Assessment is what Assess said.
	Assessment Assessment
	// Gap is the pending gap (with a *GapError) or the one being accepted
	// (Accepted true); nil when capture continues normally.
	Gap *GapRecord
	// NewGap says the gap was detected just now (count it once).
	NewGap   bool
	Accepted bool
	// Assessed says Ensure read the pending gap; Pending is the one that
	// was pending before it looked (nil: none).
	Assessed bool
	Pending  *GapRecord
}

// GapError stops capture until an operator accepts the gap.
type GapError struct{ Gap GapRecord }

func (e *GapError) Error() string {
	return fmt.Sprintf("capture gap #%d (%s): %s; nothing more is delivered until an operator accepts the gap: run `pgaudit-cdc run --accept-gap=%d` once (it records one GAP event in the audit trail and resumes from a new slot), then re-baseline the affected tables with `pgaudit-cdc backfill TABLE`",
		e.Gap.ID, e.Gap.Reason, e.Gap.Detail, e.Gap.ID)
}

// Ensure makes sure the slot continues the recorded capture: it creates the
// slot only when nothing was captured yet, records a gap when the slot cannot
// continue, and with the operator's consent (o.Accept) prepares a new slot
// and generation. It returns a *GapError while a gap is pending. It must not
// run inside a transaction (slot creation waits for writing transactions).
func Ensure(ctx context.Context, conn *pgx.Conn, o Options) (Result, error) {
	obs, err := Observe(ctx, conn, o.Slot, o.SystemID, o.Timeline)
	if err != nil {
		return Result{}, err
	}
	if err := replication.CheckSlotOwner(ctx, conn, o.Slot, obs.Slot); err != nil {
		return Result{}, err
	}
	if o.Fork != nil && obs.State.Known && obs.State.SystemID == o.SystemID && obs.State.Timeline != o.Timeline &&
		obs.Slot.Exists && obs.Slot.Failover && !obs.Slot.Invalidated() {
		if obs.SwitchPoint, obs.Delivered, err = o.Fork(ctx, obs.State); err != nil {
			return Result{}, fmt.Errorf("comparing the audit trail with the new timeline's history: %w", err)
		}
		obs.ForkChecked = true
	}
	res := Result{Assessment: Assess(obs), Slot: obs.Slot, State: obs.State, Previous: obs.State}
	pending, err := PendingGap(ctx, conn, o.Slot)
	if err != nil {
		return res, err
	}
	res.Assessed, res.Pending = true, pending
	if res.Assessment.Verdict == Gap && pending == nil {
		pending, res.NewGap, err = RecordGap(ctx, conn, o.Slot, res.Assessment, o.SystemID, o.Timeline)
		if err != nil {
			return res, err
		}
	}
	if pending != nil {
		res.Gap = pending
		if !accepts(o.Accept, pending.ID) || (o.Accept == AcceptAny && res.NewGap) {
			return res, &GapError{Gap: *pending}
		}
		return accept(ctx, conn, o, obs, res)
	}
	switch res.Assessment.Verdict {
	case Create:
		if err := replication.CreateSlot(ctx, conn, o.Slot); err != nil {
			return res, err
		}
		if res.Slot, err = replication.LookupSlot(ctx, conn, o.Slot); err != nil {
			return res, err
		}
		res.State = State{Known: true, SystemID: o.SystemID, Timeline: o.Timeline, StartLSN: res.Slot.ConfirmedFlushLSN}
		return res, save(ctx, conn, o.Slot, res.State, res.Slot.ConfirmedFlushLSN, true)
	case Adopt:
		res.State = State{Known: true, SystemID: o.SystemID, Timeline: o.Timeline, StartLSN: res.Slot.ConfirmedFlushLSN}
		return res, save(ctx, conn, o.Slot, res.State, res.Slot.ConfirmedFlushLSN, false)
	case Continue:
		if res.Assessment.TimelineMoved {
			if !obs.ForkChecked {
				// Not compared with the spine here: run does it.
				return res, nil
			}
			res.State.Timeline = o.Timeline
			return res, save(ctx, conn, o.Slot, res.State, res.Slot.ConfirmedFlushLSN, false)
		}
		if obs.Watermark == 0 {
			return res, SaveProgress(ctx, conn, o.Slot, res.Slot.ConfirmedFlushLSN)
		}
	}
	return res, nil
}

func accepts(accept string, id int64) bool {
	return accept == AcceptAny || accept == strconv.FormatInt(id, 10)
}

// accept prepares the new generation: a slot that can stream (the old one
// dropped when it is invalid), and the state to stream with.
func accept(ctx context.Context, conn *pgx.Conn, o Options, obs Observation, res Result) (Result, error) {
	res.Accepted = true
	slot := obs.Slot
	if slot.Invalidated() {
		if err := replication.DropSlot(ctx, conn, o.Slot); err != nil {
			return res, err
		}
		slot = replication.SlotInfo{}
	}
	if !slot.Exists {
		if err := replication.CreateSlot(ctx, conn, o.Slot); err != nil {
			return res, err
		}
	} else if to := res.Assessment.AdvanceTo; to > slot.ConfirmedFlushLSN {
		// A forked history: everything before the switch point is in the
		// chain already; the new generation starts where the new primary's
		// own history does.
		if err := replication.AdvanceSlot(ctx, conn, o.Slot, to); err != nil {
			return res, err
		}
	}
	var err error
	if res.Slot, err = replication.LookupSlot(ctx, conn, o.Slot); err != nil {
		return res, err
	}
	res.State = State{Known: true, SystemID: o.SystemID, Timeline: o.Timeline,
		Generation: obs.State.Generation + 1, StartLSN: res.Slot.ConfirmedFlushLSN}
	return res, nil
}

// Complete marks an accepted gap done once its GAP event is delivered, and
// saves the new generation's state, in one transaction.
func Complete(ctx context.Context, conn *pgx.Conn, slot string, g *GapRecord, st State, eventKey, acceptedBy string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("completing gap #%d: %w", g.ID, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.gaps SET accepted_at = now(),
			accepted_by = $2 || ' (database role ' || current_user || ')', resume_lsn = $3::text::pg_lsn, event_key = $4
		WHERE id = $1`, g.ID, acceptedBy, st.StartLSN.String(), eventKey); err != nil {
		return fmt.Errorf("completing gap #%d: %w", g.ID, err)
	}
	if err := SaveState(ctx, tx, slot, st); err != nil {
		return err
	}
	if err := resetProgress(ctx, tx, slot, st.StartLSN); err != nil {
		return err
	}
	if g.Reason == ReasonSpineHistoryLost {
		if err := acknowledgeLost(ctx, tx, slot, g.Lost); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("completing gap #%d: %w", g.ID, err)
	}
	return nil
}

// save records the state and the slot's position as progress (reset says
// replace rather than raise it: a new slot).
func save(ctx context.Context, conn *pgx.Conn, slot string, st State, progress pgoutput.LSN, reset bool) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("recording the capture state: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if err := SaveState(ctx, tx, slot, st); err != nil {
		return err
	}
	if reset {
		err = resetProgress(ctx, tx, slot, progress)
	} else {
		err = SaveProgress(ctx, tx, slot, progress)
	}
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("recording the capture state: %w", err)
	}
	return nil
}

// Check is the read-only form of Ensure, for status and doctor: what Assess
// says now, and the pending gap. It records nothing. The server's identity
// comes from IDENTIFY_SYSTEM on conn's connection string; when that fails
// (a role without REPLICATION), the recorded identity is assumed.
func Check(ctx context.Context, conn *pgx.Conn, slot string) (Assessment, *GapRecord, error) {
	sys, timeline, idErr := replication.Identify(ctx, conn.Config().ConnString())
	obs, err := Observe(ctx, conn, slot, sys, timeline)
	if err != nil {
		return Assessment{}, nil, err
	}
	if idErr != nil && obs.State.Known {
		obs.SystemID, obs.Timeline = obs.State.SystemID, obs.State.Timeline
	}
	pending, err := PendingGap(ctx, conn, slot)
	if err != nil {
		return Assessment{}, nil, err
	}
	return Assess(obs), pending, nil
}
