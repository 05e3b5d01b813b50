package agent

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// inFlightSink is a destination whose read-backs can miss a request that is
// still being appended (*publish.Client: the spine may append a POST after
// its sender died). JetStream de-duplicates by message id instead.
type inFlightSink interface {
	SettleTime() time.Duration
	InFlightUntil(t time.Time)
	QuietAt() time.Time
}

// predecessor makes the read-backs of this session wait for requests a
// session before it may have left in flight, as the audited database
// recorded them (capture.InFlight). A session that died delivering (kill
// -9, a lost host, a failover) never recorded its end: a request it had
// sent may land up to the settle time after it died, and a read-back made
// sooner would miss it and send the event again. It died at the latest when
// the slot was free; while the slot is still held, held says to measure
// from when this session takes it (started).
//
// When the slot is free, this session records that it delivers at once: it
// may send KEY and SEAL events before it takes the slot.
func (a *Agent) predecessor(ctx context.Context, meta *pgx.Conn) (held bool, err error) {
	s, ok := a.cfg.Sink.(inFlightSink)
	if !ok {
		return false, nil
	}
	f, err := capture.LoadInFlight(ctx, meta, a.cfg.Slot)
	if err != nil {
		return false, err
	}
	if f.Open {
		slot, err := replication.LookupSlot(ctx, meta, a.cfg.Slot)
		if err != nil {
			return false, err
		}
		if slot.Active {
			return true, nil
		}
		a.settlePredecessor(s)
	} else {
		s.InFlightUntil(f.Until)
	}
	return false, capture.OpenDeliveries(ctx, meta, a.cfg.Slot)
}

// settlePredecessor waits for a predecessor that died by now.
func (a *Agent) settlePredecessor(s inFlightSink) {
	s.InFlightUntil(time.Now().Add(s.SettleTime()))
	a.log.Info("the session before this one ended without recording it (a crash, a kill, a failover): read-backs wait for the requests it may have left in flight",
		"wait", s.SettleTime())
}

// started records that this session, which holds the slot now, delivers
// (see predecessor for held). The returned func records its end: when the
// requests it gave up on can no longer land. A session that never takes
// the slot records no end: the holder's record stands. Left unrecorded
// (the database is gone, the process dies), the next session assumes
// requests are in flight.
func (a *Agent) started(ctx context.Context, meta *pgx.Conn, held bool) (end func(), err error) {
	s, ok := a.cfg.Sink.(inFlightSink)
	if !ok {
		return func() {}, nil
	}
	if held {
		a.settlePredecessor(s)
		if err := capture.OpenDeliveries(ctx, meta, a.cfg.Slot); err != nil {
			return nil, err
		}
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		until := s.QuietAt()
		if now := time.Now(); until.Before(now) {
			until = now
		}
		if err := capture.CloseDeliveries(ctx, meta, a.cfg.Slot, until); err != nil {
			a.log.Warn("the session's end could not be recorded: the next session waits for requests it may have left in flight",
				"err", err, "wait", s.SettleTime())
		}
	}, nil
}
