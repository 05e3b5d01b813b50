package capture

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// InFlight is what the audited database records of the requests the slot's
// sessions sent to the destination (migration 0016).
type InFlight struct {
	// Open: a session was delivering and never recorded its end. It died
	// (kill -9, out of memory, a lost host, a failover), and requests it
	// had sent may still land.
	Open bool
	// Until is when requests the last session gave up on can no longer
	// land, as it recorded at its end (zero: no session recorded one).
	Until time.Time
}

// LoadInFlight reads slot's record of requests in flight.
func LoadInFlight(ctx context.Context, conn *pgx.Conn, slot string) (InFlight, error) {
	var until pgtype.Timestamptz
	err := conn.QueryRow(ctx, `SELECT in_flight_until FROM pgaudit_cdc.delivery_state WHERE slot_name = $1`, slot).Scan(&until)
	if errors.Is(err, pgx.ErrNoRows) {
		return InFlight{}, nil
	}
	if err != nil {
		return InFlight{}, fmt.Errorf("reading which requests to the destination may be in flight: %w", err)
	}
	if until.InfinityModifier == pgtype.Infinity {
		return InFlight{Open: true}, nil
	}
	return InFlight{Until: until.Time}, nil
}

// OpenDeliveries records that a session of slot delivers from now on: until
// it records its end, a successor must assume requests are in flight.
func OpenDeliveries(ctx context.Context, conn *pgx.Conn, slot string) error {
	if _, err := conn.Exec(ctx, `INSERT INTO pgaudit_cdc.delivery_state (slot_name, in_flight_until) VALUES ($1, 'infinity')
		ON CONFLICT (slot_name) DO UPDATE SET in_flight_until = 'infinity'`, slot); err != nil {
		return fmt.Errorf("recording that a session delivers: %w", err)
	}
	return nil
}

// CloseDeliveries records that the session of slot stopped delivering, and
// that requests it gave up on can no longer land after until.
func CloseDeliveries(ctx context.Context, conn *pgx.Conn, slot string, until time.Time) error {
	if _, err := conn.Exec(ctx, `UPDATE pgaudit_cdc.delivery_state SET in_flight_until = $2 WHERE slot_name = $1`, slot, until); err != nil {
		return fmt.Errorf("recording that the session stopped delivering: %w", err)
	}
	return nil
}
