package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// lastDeliveredReader is implemented by sinks that can say which event of a
// key generation they hold last (the spine, by reading back).
type lastDeliveredReader interface {
	LastDelivered(ctx context.Context, systemID, keySlot string, sources []string, before pgoutput.LSN) (envelope.Position, string, error)
}

// recordGap delivers the GAP event of a gap the operator accepted, then
// marks the gap done and saves the new generation. The event goes first: a
// crash in between leaves the gap pending, and the same event (same key) is
// found in the spine the next time instead of being appended again.
func (a *Agent) recordGap(ctx context.Context, meta *pgx.Conn, capt capture.Result) error {
	var last *capture.Delivered
	if prev := capt.Previous; prev.Known {
		pos, ts, ok, err := a.lastDelivered(ctx, meta, prev.SystemID, capture.KeySlot(a.cfg.Slot, prev.Generation), 0)
		if err != nil {
			return fmt.Errorf("reading back the last delivered events before recording gap #%d: %w", capt.Gap.ID, err)
		}
		if ok {
			last = &capture.Delivered{Position: pos, CommitTime: ts}
		}
	}
	ev, err := capture.GapEvent(capt.Gap, capt.State, a.cfg.Slot, last, a.cfg.AcceptedBy, time.Now())
	if err != nil {
		return err
	}
	if a.cfg.Spine != nil {
		a.cfg.Spine.SetIdentity(capt.State.SystemID, capture.KeySlot(a.cfg.Slot, capt.State.Generation))
	}
	if err := a.cfg.Sink.Publish(ctx, ev); err != nil {
		if publish.IsRejected(err) {
			return &ConfigError{fmt.Errorf("the spine refused the GAP event of gap #%d, so the gap cannot be recorded: %w", capt.Gap.ID, err)}
		}
		return fmt.Errorf("delivering the GAP event of gap #%d: %w", capt.Gap.ID, err)
	}
	a.m.EventsDelivered.WithLabelValues(ev.Table, ev.Operation, ev.Kind).Inc()
	if err := capture.Complete(ctx, meta, a.cfg.Slot, capt.Gap, capt.State, ev.Key, a.cfg.AcceptedBy); err != nil {
		return err
	}
	tables := capt.Gap.Tables
	a.log.Warn("capture gap accepted: one GAP event is in the audit trail and capture resumes from a new position; re-baseline the affected tables",
		"gap_id", capt.Gap.ID, "reason", capt.Gap.Reason, "resume_lsn", capt.State.StartLSN.String(),
		"generation", capt.State.Generation, "tables", strings.Join(tables, ", "),
		"next", "pgaudit-cdc backfill TABLE, for each table listed")
	return nil
}

// forkPoints answers capture.Options.Fork: where timeline st.Timeline ended
// in the history of the server's timeline (zero when it is not in that
// history at all: a fork from an unknown point), and the commit position of
// the last event delivered for st's generation: the spine's, read back, or
// this process's own high-water mark when that is further (a request of the
// previous session may have been appended after the read-back began).
func (a *Agent) forkPoints(ctx context.Context, meta *pgx.Conn, sess *replication.Session, st capture.State) (switchPoint, delivered pgoutput.LSN, err error) {
	switchPoint, err = sess.SwitchPoint(ctx, st.Timeline)
	if errors.Is(err, replication.ErrNotInHistory) {
		switchPoint, err = 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	keySlot := capture.KeySlot(a.cfg.Slot, st.Generation)
	last, _, _, err := a.lastDelivered(ctx, meta, st.SystemID, keySlot, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("reading back the last delivered event: %w", err)
	}
	delivered = last.CommitLSN
	if a.cfg.Spine != nil {
		delivered = max(delivered, a.cfg.Spine.MarkFor(st.SystemID, keySlot).CommitLSN)
	}
	return switchPoint, delivered, nil
}

// lastDelivered reads back the newest event the spine holds for systemID
// and keySlot, over every source a watch ever used. ok is false when the
// sink cannot say (the stdout sink).
func (a *Agent) lastDelivered(ctx context.Context, meta *pgx.Conn, systemID, keySlot string, before pgoutput.LSN) (pos envelope.Position, commitTime string, ok bool, err error) {
	r, ok := a.cfg.Sink.(lastDeliveredReader)
	if !ok {
		return envelope.Position{}, "", false, nil
	}
	sources, err := watchSources(ctx, meta)
	if err != nil {
		return envelope.Position{}, "", false, err
	}
	pos, commitTime, err = r.LastDelivered(ctx, systemID, keySlot, sources, before)
	return pos, commitTime, err == nil, err
}

// watchSources lists every source a watch ever used, and the self-audit
// source: where the last delivered event can be.
func watchSources(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	entries, err := watches.Load(ctx, conn, true)
	if err != nil {
		return nil, err
	}
	schemas, err := watches.LoadSchemas(ctx, conn, true)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{envelope.SelfAuditSource: true}
	out := []string{envelope.SelfAuditSource}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, e := range entries {
		add(e.Source)
	}
	for _, e := range schemas {
		add(e.Source)
	}
	return out, nil
}
