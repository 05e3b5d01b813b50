package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
)

// TestConfirmedPromptlyWhenIdle: once the stream is quiet, the slot's
// confirmed position reaches the last delivered change within a second, not
// at the next status interval (here 30 s): lag dashboards then show no
// backlog that is not there.
func TestConfirmedPromptlyWhenIdle(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.exec(`CREATE TABLE q (id int PRIMARY KEY)`)
	h.watch("q", "other", "s")
	h.startAgentWith(func(c *agent.Config) { c.StatusInterval = 30 * time.Second })
	for round := 1; round <= 3; round++ {
		h.exec(`INSERT INTO q SELECT g FROM generate_series($1::int * 100, $1::int * 100 + 99) g`, round)
		var end string
		if err := h.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
			t.Fatal(err)
		}
		committed := time.Now()
		deadline := committed.Add(raceSlowdown * 3 * time.Second)
		for {
			var reached bool
			if err := h.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`,
				testSlot, end).Scan(&reached); err != nil {
				t.Fatal(err)
			}
			if reached {
				t.Logf("round %d: confirmed through the commit %s after it", round, time.Since(committed).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the slot's confirmed position did not reach %s within %s of the commit (status interval 30 s)", round, end, deadline.Sub(committed))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
