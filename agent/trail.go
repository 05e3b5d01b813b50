package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// trailReader is what the agent needs to read its trail back (the spine).
type trailReader interface {
	ReadBack(ctx context.Context, source string, fn func(publish.Stored)) error
	HasEvent(ctx context.Context, source, key string, digest []byte) (bool, error)
}

// Seal defaults (Config.SealEvents, SealInterval, SealIdle).
const (
	defaultSealEvents   = 10000
	defaultSealInterval = 250 * time.Millisecond
	defaultSealIdle     = 100 * time.Millisecond
	// defaultHeldCheckInterval is Config.HeldCheckInterval's default.
	defaultHeldCheckInterval = 5 * time.Second
)

// sealing is the publisher's part of the authenticated trail: it folds what
// was settled, seals it at a bounded interval, records the anchor, and only
// then lets the transactions it covers be accepted (confirm.Tracker), so
// that a crash replays every event that is not sealed.
type sealing struct {
	a      *Agent
	dl     *deadLetters // the publisher's
	sealer *trail.Sealer
	conn   *pgx.Conn // the publisher's own, for anchors, opened on first use
	// held is the highest position accepted by the sink but not yet
	// sealed: it is accepted once the seal over it is recorded.
	held pgoutput.LSN
	// timer is the idle wait's (see idle).
	timer *time.Timer
	// checkedAt is when the destination last said it still holds what was
	// delivered (heldChecker).
	checkedAt time.Time
}

// startTrail introduces the signing key into the trail if it is new, checks
// that the trail still holds the last anchored seal (a spine that lost or
// rewrote its history is a gap), and returns the sealing state of the
// session; nil when the agent runs unsigned.
func (a *Agent) startTrail(ctx context.Context, meta *pgx.Conn, sess *replication.Session, keySlot string, dl *deadLetters) (*sealing, error) {
	if a.cfg.Signer == nil {
		return nil, nil
	}
	anchor, ok, err := capture.LoadAnchor(ctx, meta, a.cfg.Slot)
	if err != nil {
		return nil, err
	}
	chain := sess.SystemID + ":" + a.cfg.Slot
	if ok {
		chain = anchor.Chain
	}
	if err := a.ensureKey(ctx, meta, chain); err != nil {
		return nil, err
	}
	if ok {
		if anchor, err = a.checkAnchor(ctx, meta, sess, anchor); err != nil {
			return nil, err
		}
	}
	return &sealing{a: a, dl: dl, sealer: trail.NewSealer(a.cfg.Signer, chain, anchor.Anchor, sess.SystemID, keySlot)}, nil
}

// ensureKey checks the signing key against the keys recorded for this
// slot's trail, records it and sends its KEY event the first time.
func (a *Agent) ensureKey(ctx context.Context, meta *pgx.Conn, chain string) error {
	key := a.cfg.Signer
	keys, err := capture.SigningKeys(ctx, meta, a.cfg.Slot)
	if err != nil {
		return err
	}
	fp := key.Fingerprint()
	var mine *capture.SigningKey
	for i := range keys {
		if keys[i].Fingerprint == fp {
			mine = &keys[i]
		}
	}
	switch {
	case len(keys) == 0:
		ev, err := trail.KeyEvent(key, nil, chain, time.Now())
		if err != nil {
			return err
		}
		rec := capture.SigningKey{Fingerprint: fp, PublicKey: trail.EncodePublic(key.Public()), KeyEvent: string(ev.Body)}
		if err := capture.AddSigningKey(ctx, meta, a.cfg.Slot, rec); err != nil {
			return err
		}
		a.log.Info("signing key introduced into the trail", "fingerprint", fp, "chain", chain)
		mine = &rec
	case mine == nil:
		return &ConfigError{fmt.Errorf("the signing key (%s) is not the key recorded for this trail (%s): run with the trail's key file, or rotate to this key with `pgaudit-cdc rotate-key --old-key-file OLD --signing-key-file NEW`", fp, keys[len(keys)-1].Fingerprint)}
	case keys[len(keys)-1].Fingerprint != fp:
		return &ConfigError{fmt.Errorf("the signing key (%s) was replaced by %s for this trail: run with the newer key's file", fp, keys[len(keys)-1].Fingerprint)}
	}
	if mine.Sent {
		return nil
	}
	ev, err := envelope.ParseEvent([]byte(mine.KeyEvent))
	if err != nil {
		return fmt.Errorf("reading the recorded KEY event of %s: %w", fp, err)
	}
	if err := a.cfg.Sink.Publish(ctx, ev); err != nil {
		if publish.IsRejected(err) {
			return &ConfigError{fmt.Errorf("the spine refused the KEY event that introduces the signing key %s, so no seal could be verified: let the spine accept kind %q from source %q: %w", fp, ev.Kind, ev.Source, err)}
		}
		return fmt.Errorf("sending the KEY event of %s: %w", fp, err)
	}
	return capture.MarkKeySent(ctx, meta, a.cfg.Slot, fp)
}

// checkAnchor compares the last anchored seal with the trail: a newer seal
// found there (recorded before a crash kept the database from hearing of
// it) becomes the anchor, a seal the trail lacks while the events it covers
// are there is sent again, and a trail that lost both is a gap.
func (a *Agent) checkAnchor(ctx context.Context, meta *pgx.Conn, sess *replication.Session, anchor capture.Anchor) (capture.Anchor, error) {
	r, ok := a.cfg.Sink.(trailReader)
	if !ok {
		return anchor, nil
	}
	seals, err := a.readSeals(ctx, r, anchor.Chain)
	if err != nil {
		return anchor, fmt.Errorf("reading the trail's seals back: %w", err)
	}
	// The newest of this chain's seals the trail holds.
	var newest *foundSeal
	for i := range seals {
		if newest == nil || seals[i].seal.Seq > newest.seal.Seq {
			newest = &seals[i]
		}
	}
	if newest != nil && newest.seal.Seq > anchor.Seq {
		adopted, err := a.adoptSeal(ctx, meta, *newest)
		if err != nil {
			return anchor, err
		}
		a.log.Info("adopted a newer seal found in the trail as the anchor", "seq", adopted.Seq)
		return adopted, nil
	}
	if newest != nil && newest.seal.Seq == anchor.Seq || anchor.LostAcknowledged {
		return anchor, nil
	}
	// Only the real copy of that event counts: another producer can post
	// an event under its key (it was in the trail for all to see), which
	// must not pass for the trail still holding it.
	short, err := trail.LastShortDigest(anchor.Event)
	if err != nil {
		return anchor, fmt.Errorf("reading the anchored SEAL event: %w", err)
	}
	held, err := r.HasEvent(ctx, anchor.ToSource, anchor.ToKey, short)
	if err != nil {
		return anchor, fmt.Errorf("reading back the last sealed event: %w", err)
	}
	if held {
		sealKey := trail.SealKey(anchor.Chain, anchor.Seq)
		dead, err := deadletters.New(meta, a.cfg.Slot).Keys(ctx, sealKey)
		if err != nil || slices.Contains(dead, sealKey) {
			return anchor, err // a refused seal waits for dead-letters retry
		}
		ev, err := envelope.ParseEvent(anchor.Event)
		if err != nil {
			return anchor, fmt.Errorf("reading the anchored SEAL event: %w", err)
		}
		ev.Pos = anchor.To
		a.log.Warn("the trail lacks the last anchored seal but holds the events it covers: sending the seal again", "seq", anchor.Seq)
		return anchor, a.cfg.Sink.Publish(ctx, ev)
	}
	lost := anchor.LostRange()
	if newest != nil {
		// The trail still holds the events up to an older seal.
		if newest.seal.Total >= anchor.AcknowledgedTotal {
			lost.FirstKey, lost.After, lost.Count = "", newest.seal.LastKey, anchor.Total-newest.seal.Total
		}
		// Else the seal it holds is from before a loss an operator
		// accepted: what it lost since is the anchor's range.
	}
	detail := fmt.Sprintf("the spine no longer holds seal %d of this trail nor the event %s it covered, which the agent delivered and the audited database anchored at %s: the spine lost or rewrote its history",
		anchor.Seq, anchor.ToKey, anchor.RecordedAt.UTC().Format(time.RFC3339))
	return anchor, a.spineGap(ctx, meta, sess, detail, lost)
}

type foundSeal struct {
	seal  trail.Seal
	event []byte
	to    envelope.Position
}

// readSeals reads back the SEAL events of chain that the signing key
// signed (a forged seal is not one of ours).
func (a *Agent) readSeals(ctx context.Context, r trailReader, chain string) ([]foundSeal, error) {
	var out []foundSeal
	err := r.ReadBack(ctx, envelope.SelfAuditSource, func(e publish.Stored) {
		if !trail.IsTrailKey(e.Key) {
			return
		}
		seal, ok := trail.CheckSeal(e.Raw, a.cfg.Signer.Public())
		if !ok || seal.Chain != chain {
			return
		}
		to, ok := envelope.ParsePosition(seal.To)
		if !ok {
			// Signed with our key, so written by an agent: never adopted
			// at position 0.
			a.log.Error("a SEAL event signed with the agent's key names a position that does not parse; it is not adopted", "key", e.Key, "to", seal.To)
			return
		}
		out = append(out, foundSeal{seal: seal, to: to, event: append([]byte(nil), e.Raw...)})
	})
	return out, err
}

// adoptSeal records a seal found in the trail as the anchor.
func (a *Agent) adoptSeal(ctx context.Context, meta *pgx.Conn, s foundSeal) (capture.Anchor, error) {
	h, err := s.seal.Hash()
	if err != nil {
		return capture.Anchor{}, err
	}
	body, err := trail.SealEventBody(s.event)
	if err != nil {
		return capture.Anchor{}, err
	}
	an := capture.Anchor{Anchor: trail.Anchor{Chain: s.seal.Chain, Seq: s.seal.Seq, Hash: h, SystemID: s.seal.SystemID,
		Slot: s.seal.Slot, To: s.to, ToKey: s.seal.LastKey, FirstKey: s.seal.FirstKey, Total: s.seal.Total, Event: body}}
	if err := capture.SaveAnchor(ctx, meta, a.cfg.Slot, an); err != nil {
		return capture.Anchor{}, err
	}
	return an, nil
}

// spineGap records that the spine lost events the agent had delivered, and
// stops capture until an operator accepts it: the gap path's *GapError.
func (a *Agent) spineGap(ctx context.Context, meta *pgx.Conn, sess *replication.Session, detail string, lost envelope.GapLostRange) error {
	g, isNew, err := capture.RecordSpineGap(ctx, meta, a.cfg.Slot, detail, lost, sess.SystemID, sess.Timeline)
	if err != nil {
		return err
	}
	if isNew {
		a.m.GapsDetected.WithLabelValues(capture.ReasonSpineHistoryLost).Inc()
	}
	a.m.GapPending.Set(1)
	a.log.Error("capture gap: the spine lost events the agent had delivered; capture is stopped until an operator accepts the gap",
		"gap_id", g.ID, "reason", g.Reason, "detail", g.Detail, "lost_first_key", lost.FirstKey, "lost_after_key", lost.After,
		"lost_last_key", lost.LastKey, "lost_count", lost.Count,
		"fix", fmt.Sprintf("restore the lost events into the spine from a copy of the trail, or run pgaudit-cdc run --accept-gap=%d to record the hole", g.ID))
	return &capture.GapError{Gap: *g}
}

// lostOnTheWay turns a spine that lost its history under a running session
// into a gap: the events anchored so far are what it lost.
func (a *Agent) lostOnTheWay(ctx context.Context, meta *pgx.Conn, sess *replication.Session, cause error) error {
	anchor, ok, err := capture.LoadAnchor(ctx, meta, a.cfg.Slot)
	if err != nil {
		return errors.Join(cause, err)
	}
	lost := envelope.GapLostRange{}
	if ok {
		lost = anchor.LostRange()
	}
	return a.spineGap(ctx, meta, sess, cause.Error(), lost)
}

// fold adds a settled event (dead: kept as a dead letter).
func (s *sealing) fold(ev *envelope.Event, dead bool) {
	n, _ := s.sealer.Pending()
	var now time.Time
	if n == 0 {
		now = time.Now() // the clock only matters for a seal's first event
	}
	s.sealer.Fold(ev, dead, now) // a replay of a sealed event is not folded
	n, _ = s.sealer.Pending()
	s.a.m.UnsealedEvents.Set(float64(n))
}

// hold takes an accepted position: it may be accepted at once when nothing
// is waiting for a seal, else once the seal is recorded.
func (s *sealing) hold(lsn pgoutput.LSN) (pgoutput.LSN, bool) {
	if n, _ := s.sealer.Pending(); n == 0 {
		return lsn, true
	}
	s.held = max(s.held, lsn)
	return 0, false
}

// due reports whether the pending events must be sealed now: as many as
// SealEvents, or the oldest SealInterval old.
func (s *sealing) due(now time.Time) bool {
	n, first := s.sealer.Pending()
	return n > 0 && (n >= s.a.cfg.SealEvents || now.Sub(first) >= s.a.cfg.SealInterval)
}

// idle returns a channel that fires when the publisher has waited long
// enough for more work to seal what is pending (nil: nothing pending). One
// timer serves every wait.
func (s *sealing) idle() <-chan time.Time {
	n, first := s.sealer.Pending()
	if n == 0 {
		return nil
	}
	d := min(s.a.cfg.SealIdle, max(0, s.a.cfg.SealInterval-time.Since(first)))
	if s.timer == nil {
		s.timer = time.NewTimer(d)
	} else {
		s.timer.Reset(d)
	}
	return s.timer.C
}

// heldChecker is a destination that can tell whether it still holds the
// last event it appended (*publish.Client): a *publish.HistoryLostError
// when it does not.
type heldChecker interface {
	CheckHeld(ctx context.Context) error
}

// seal closes a seal over the pending events, records it as the anchor,
// delivers it, and returns the position that may now be accepted (0: none).
// The record comes first: it is where concurrent agents of one slot agree
// on the chain (capture.ErrAnchorTaken ends the session of the one that
// lost), and a seal recorded but not delivered is sent again by the next
// session (checkAnchor).
func (s *sealing) seal(ctx context.Context) (pgoutput.LSN, error) {
	ev, anchor, err := s.sealer.Close(time.Now())
	if err != nil || ev == nil {
		return 0, err
	}
	// Recording the seal lets what it covers be confirmed: first make sure,
	// every HeldCheckInterval, that the spine still holds what was
	// delivered (a restart that other producers' events hid from the
	// event_ids of the appends since). A loss between two checks is found
	// by the next one, and the GAP event names everything sealed since,
	// so it is declared all the same; only the confirmations in between
	// went ahead.
	if hc, ok := s.a.cfg.Sink.(heldChecker); ok && time.Since(s.checkedAt) >= s.a.cfg.HeldCheckInterval {
		if err := hc.CheckHeld(ctx); err != nil {
			return 0, err
		}
		s.checkedAt = time.Now()
	}
	if err := s.record(ctx, anchor); err != nil {
		return 0, err
	}
	if err := s.a.cfg.Sink.Publish(ctx, ev); err != nil {
		var rej *publish.RejectedError
		if !errors.As(err, &rej) || s.a.cfg.Spine == nil {
			return 0, fmt.Errorf("delivering SEAL event %d: %w", anchor.Seq, err)
		}
		// Refused for good, like any event: kept, and the trail goes on.
		if err := s.a.keepRefused(ctx, s.dl, ev, rej, ": the events this SEAL covers are not authenticated in the trail until it is retried"); err != nil {
			return 0, err
		}
	}
	s.a.m.Seals.Inc()
	s.a.m.LastSealTime.Set(float64(time.Now().UnixMicro()) / 1e6)
	s.a.m.UnsealedEvents.Set(0)
	held := s.held
	s.held = 0
	return held, nil
}

// record saves the anchor on the publisher's own connection. A failure
// ends the session rather than waiting: nothing after the seal can be
// confirmed until it is recorded, and a server shutting down waits for its
// walsender, which waits for a confirmation. The next session finds the seal
// in the trail and records it then (checkAnchor).
func (s *sealing) record(ctx context.Context, anchor trail.Anchor) error {
	if err := s.saveAnchor(ctx, anchor); err != nil {
		s.a.m.Retries.WithLabelValues("anchor_record").Inc()
		return fmt.Errorf("recording seal %d as the trail's anchor (the next session records it from the trail): %w", anchor.Seq, err)
	}
	if s.a.cfg.AnchorFile != "" {
		if err := trail.AppendAnchor(s.a.cfg.AnchorFile, anchor); err != nil {
			return fmt.Errorf("recording seal %d in --anchor-file %s: %w", anchor.Seq, s.a.cfg.AnchorFile, err)
		}
	}
	return nil
}

func (s *sealing) saveAnchor(ctx context.Context, anchor trail.Anchor) error {
	if s.conn == nil || s.conn.IsClosed() {
		conn, err := connectDB(ctx, s.a.cfg.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connecting to record the trail's anchor: %w", err)
		}
		s.conn = conn
	}
	return capture.SaveAnchor(ctx, s.conn, s.a.cfg.Slot, capture.Anchor{Anchor: anchor})
}

func (s *sealing) close(ctx context.Context) {
	if s != nil && s.conn != nil {
		s.conn.Close(ctx)
	}
}

// finalSeal seals what the publisher settled before the session ended, so
// that events delivered by a session that cannot replay them (its slot
// lost) are still authenticated. It returns the position that may be
// accepted; errors are logged: the next session replays and seals.
func (s *sealing) finalSeal(ctx context.Context) pgoutput.LSN {
	if s == nil {
		return 0
	}
	if n, _ := s.sealer.Pending(); n == 0 {
		return 0
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	s.checkedAt = time.Time{} // the last seal of a session always checks
	held, err := s.seal(fctx)
	if err != nil {
		s.a.log.Warn("sealing the session's last events failed; the next session replays and seals them", "err", err)
		return 0
	}
	return held
}
