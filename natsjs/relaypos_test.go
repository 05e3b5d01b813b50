package natsjs

import (
	"context"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
)

// A relay's in-flight record: open while it delivers, how long its
// given-up requests could land once it stopped, and closed only by the
// relay that opened it, never over a newer relay of the same name.
func TestRelayInFlightRecord(t *testing.T) {
	cl := natstest.Start(t, 1)
	c, _ := newClient(t, cl.URLs())
	ctx := context.Background()
	check := func(wantOpen bool, wantLeft time.Duration) {
		t.Helper()
		open, left, err := c.RelayInFlight(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if open != wantOpen || left != wantLeft {
			t.Fatalf("record: open %t, left %s; want open %t, left %s", open, left, wantOpen, wantLeft)
		}
	}
	check(false, 0) // nothing recorded
	first, err := c.OpenRelayInFlight(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	check(true, 0)
	second, err := c.OpenRelayInFlight(ctx, "r") // a relay of the same name started meanwhile
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseRelayInFlight(ctx, "r", first, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	check(true, 0) // the first one's end does not close the second one's record
	if err := c.CloseRelayInFlight(ctx, "r", second, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	check(false, 3*time.Second)
	third, err := c.OpenRelayInFlight(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseRelayInFlight(ctx, "r", third, -time.Second); err != nil {
		t.Fatal(err)
	}
	check(false, 0) // nothing given up on
	if _, _, err := c.RelayInFlight(ctx, "other"); err != nil {
		t.Fatal(err)
	}
}
