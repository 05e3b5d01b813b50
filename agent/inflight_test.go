package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
)

// The audited database says whether requests a session sent may still land
// (migration 0016): 'infinity' while one delivers, its end once it stopped.
// A session that finds no recorded end follows one that died delivering:
// it says so and waits before it reads the trail back, and then delivers.
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
	stopped := time.Now()
	// The harness's spine timeout (2 s, longer under -race) bounds how long
	// a request given up on at the stop may still land.
	if f := load(); f.Open || f.Until.IsZero() || f.Until.After(stopped.Add(raceSlowdown*2*time.Second)) {
		t.Fatalf("after a clean stop: got %+v, want the end recorded, at most the spine timeout after %s", f, stopped)
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
	if err := capture.OpenDeliveries(ctx, h.conn, testSlot); err != nil {
		t.Fatal(err)
	}
	h.startAgent()
	h.insertRange(12, 12)
	h.waitEvents(12, raceSlowdown*30*time.Second)
	if !strings.Contains(obs.logs.String(), says) {
		t.Fatalf("the session after a dead one did not say it waits for its requests")
	}
}
