package agent

import (
	"context"
	"crypto/rand"
	"fmt"
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

// deliveries is a session's mark in pgaudit_cdc.delivery_state (see
// capture.InFlight): whether requests a session sent may still land. A
// session that died delivering (kill -9, out of memory, a lost host) never
// records its end: a request it had sent may land up to the settle time
// after it died, and a read-back made sooner would miss it and send the
// event again. So a session reads the mark before it reads anything back,
// and waits for what it says.
type deliveries struct {
	a    *Agent
	meta *pgx.Conn
	s    inFlightSink // nil: a destination without the need
	// owner names this session in the mark.
	owner string
}

// predecessor reads the mark when the session begins, before anything is
// read back. A session that recorded its end left its requests' remaining
// settle time; one that did not, and no longer holds the slot, died by
// now. While a session with an open mark holds the slot, this one is a
// standby: it stops here with replication.ErrSlotInUse, before any read-back
// or request, and tries again (the holder may also be dead and not noticed
// by the server yet). This session marks itself at once: it may send KEY,
// SEAL and GAP events before it takes the slot. The caller defers end.
func (a *Agent) predecessor(ctx context.Context, meta *pgx.Conn) (*deliveries, error) {
	d := &deliveries{a: a, meta: meta}
	s, ok := a.cfg.Spine.(inFlightSink) // the client itself, when the sink wraps it
	if !ok {
		if s, ok = a.cfg.Sink.(inFlightSink); !ok {
			return d, nil
		}
	}
	d.s, d.owner = s, rand.Text()
	f, err := capture.LoadInFlight(ctx, meta, a.cfg.Slot)
	if err != nil {
		return nil, err
	}
	settle := s.SettleTime()
	if f.Open {
		slot, err := replication.LookupSlot(ctx, meta, a.cfg.Slot)
		if err != nil {
			return nil, err
		}
		if slot.Active {
			return nil, fmt.Errorf("slot %q is streamed by a session that marked itself delivering (pid %d): %w", a.cfg.Slot, slot.ActivePID, replication.ErrSlotInUse)
		}
		s.InFlightUntil(time.Now().Add(settle))
		a.log.Info("the session before this one ended without recording it (a crash, a kill, a lost host): read-backs wait for the requests it may have left in flight",
			"wait", settle)
	} else {
		s.InFlightUntil(time.Now().Add(min(f.Left, settle)))
	}
	return d, capture.OpenDeliveries(ctx, meta, a.cfg.Slot, d.owner, false)
}

// started marks this session, which holds the slot now, as the one that
// delivers, over any other mark (one written since predecessor read it).
func (d *deliveries) started(ctx context.Context) error {
	if d.s == nil {
		return nil
	}
	return capture.OpenDeliveries(ctx, d.meta, d.a.cfg.Slot, d.owner, true)
}

// end records the session's end over its own mark: how long the requests
// it gave up on may still land. Left unrecorded (the database is gone, the
// process dies), the next session assumes requests are in flight.
func (d *deliveries) end(ctx context.Context) {
	if d.s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	left := max(time.Until(d.s.QuietAt()), 0)
	conn := d.meta
	if conn.IsClosed() {
		// A stop cancelled a query on it: a clean stop is still recorded.
		var err error
		if conn, err = pgx.Connect(ctx, d.a.cfg.DatabaseURL); err != nil {
			d.unrecorded(err)
			return
		}
		defer conn.Close(ctx)
	}
	if err := capture.CloseDeliveries(ctx, conn, d.a.cfg.Slot, d.owner, left); err != nil {
		d.unrecorded(err)
	}
}

func (d *deliveries) unrecorded(err error) {
	d.a.log.Warn("the session's end could not be recorded: the next session waits for requests it may have left in flight",
		"err", replication.Explain(err), "wait", d.s.SettleTime())
}
