package capture

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// InFlight is what the audited database records of the requests the slot's
// sessions sent to the destination (migration 0016).
type InFlight struct {
	// Open: a session was delivering and never recorded its end. It may
	// still deliver (it holds the slot), or it died (kill -9, out of
	// memory, a lost host), and requests it had sent may still land.
	Open bool
	// Left is how long requests the last session gave up on may still
	// land, by the database server's clock, as that session recorded at
	// its end (zero: none).
	Left time.Duration
}

// LoadInFlight reads slot's record of requests in flight.
func LoadInFlight(ctx context.Context, conn *pgx.Conn, slot string) (InFlight, error) {
	var f InFlight
	var left float64
	err := conn.QueryRow(ctx, `SELECT in_flight_until = 'infinity',
			CASE WHEN in_flight_until = 'infinity' THEN 0 ELSE greatest(extract(epoch FROM in_flight_until - now()), 0) END
		FROM pgaudit_cdc.delivery_state WHERE slot_name = $1`, slot).Scan(&f.Open, &left)
	if errors.Is(err, pgx.ErrNoRows) {
		return InFlight{}, nil
	}
	if err != nil {
		return InFlight{}, fmt.Errorf("reading which requests to the destination may be in flight: %w", err)
	}
	f.Left = time.Duration(left * float64(time.Second))
	return f, nil
}

// OpenDeliveries records that session owner of slot delivers from now on:
// until it records its end, a successor must assume requests are in flight.
// Unless holding is set (owner holds the slot), the mark of another session
// that is open is left as it is: that one may hold the slot, and its end is
// its own to record.
func OpenDeliveries(ctx context.Context, conn *pgx.Conn, slot, owner string, holding bool) error {
	if _, err := conn.Exec(ctx, `INSERT INTO pgaudit_cdc.delivery_state AS d (slot_name, in_flight_until, owner) VALUES ($1, 'infinity', $2)
		ON CONFLICT (slot_name) DO UPDATE SET in_flight_until = 'infinity', owner = $2
		WHERE $3 OR d.in_flight_until <> 'infinity'`, slot, owner, holding); err != nil {
		return fmt.Errorf("recording that a session delivers: %w", err)
	}
	return nil
}

// CloseDeliveries records that session owner of slot stopped delivering,
// and that requests it gave up on may still land for left. A mark written
// since by another session is left as it is.
func CloseDeliveries(ctx context.Context, conn *pgx.Conn, slot, owner string, left time.Duration) error {
	if _, err := conn.Exec(ctx, `UPDATE pgaudit_cdc.delivery_state SET in_flight_until = now() + $3 * interval '1 microsecond'
		WHERE slot_name = $1 AND owner = $2`, slot, owner, left.Microseconds()); err != nil {
		return fmt.Errorf("recording that the session stopped delivering: %w", err)
	}
	return nil
}
