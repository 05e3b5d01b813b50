package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
)

// The audited database says whether requests a session sent may still land
// (migration 0016): open while one delivers, and how long its given-up
// requests may land once it stopped. A session that finds a mark still open
// follows one that died delivering: it says so, and its first read-back
// waits the settle time (min(spine timeout, 5 s)) before it delivers.
func TestDeliveryStateRecordsTheSessionsEnd(t *testing.T) {
	h, obs := tenRowsOnT1(t)
	ctx := context.Background()
	load := func() capture.InFlight {
		t.Helper()
		f, err := capture.LoadInFlight(ctx, h.conn, testSlot)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := load(); !f.Open {
		t.Fatalf("while the agent delivers: got %+v, want open", f)
	}
	h.stopAgent()
	settle := min(raceSlowdown*2*time.Second, 5*time.Second) // the harness's spine timeout
	if f := load(); f.Open || f.Left > settle {
		t.Fatalf("after a clean stop: got %+v, want its end recorded, at most %s to settle", f, settle)
	}
	const says = "read-backs wait for the requests it may have left in flight"
	h.startAgent()
	h.insertRange(11, 11)
	h.waitEvents(11, raceSlowdown*30*time.Second)
	h.stopAgent()
	if strings.Contains(obs.logs.String(), says) {
		t.Fatalf("a session after a clean stop waited for its predecessor's requests")
	}

	// A predecessor that died delivering.
	if err := capture.OpenDeliveries(ctx, h.conn, testSlot, "dead", true); err != nil {
		t.Fatal(err)
	}
	h.insertRange(12, 12)
	started := time.Now()
	h.startAgent()
	h.waitEvents(12, raceSlowdown*30*time.Second)
	if took := time.Since(started); took < settle {
		t.Fatalf("row 12 was delivered %s after the start, want the read-back to wait %s first", took, settle)
	}
	if !strings.Contains(obs.logs.String(), says) {
		t.Fatalf("the session after a dead one did not say it waits for its requests")
	}
}

// A session records its end only over its own mark, and one that does not
// hold the slot never marks over another's open mark: a standby, or a
// session that lost the slot, cannot make a later holder's requests look
// settled.
func TestDeliveryMarksAreOwned(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	const slot = "marks"
	step := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	open := func(want bool) {
		t.Helper()
		f, err := capture.LoadInFlight(ctx, h.conn, slot)
		step(err)
		if f.Open != want {
			t.Fatalf("got open %v, want %v", f.Open, want)
		}
	}
	_, err := migrations.Apply(ctx, h.conn)
	step(err)
	step(capture.OpenDeliveries(ctx, h.conn, slot, "a", true))
	step(capture.OpenDeliveries(ctx, h.conn, slot, "standby", false))
	step(capture.CloseDeliveries(ctx, h.conn, slot, "standby", 0))
	open(true) // a's mark stands
	step(capture.CloseDeliveries(ctx, h.conn, slot, "a", time.Second))
	open(false)
	step(capture.OpenDeliveries(ctx, h.conn, slot, "b", false)) // the slot is free
	open(true)
	step(capture.OpenDeliveries(ctx, h.conn, slot, "c", true)) // c took the slot
	step(capture.CloseDeliveries(ctx, h.conn, slot, "b", 0))
	open(true) // b lost the slot: c's mark stands
	step(capture.CloseDeliveries(ctx, h.conn, slot, "c", 0))
	open(false)
}
