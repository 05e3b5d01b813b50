package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// TestStatusShowsStreamedTransactions: a transaction over
// logical_decoding_work_mem is streamed to run while in progress, and
// status says so, beside what the server spilled to its own disk (nothing).
func TestStatusShowsStreamedTransactions(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL(), "PGAUDIT_SPILL_DIR": t.TempDir(), "PGAUDIT_SPILL_MEMORY": "64KiB"}
	pgtest.StreamEveryLargeTransaction(t, dsn)
	exec(t, dsn, `CREATE TABLE big (id int PRIMARY KEY, v text)`)
	mustRun(t, env, "watch", "big", "--kind", "other", "--source", "migration")
	stop := startAgent(t, env)
	exec(t, dsn, `INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g`)
	waitFor(t, "2,000 events", 30*time.Second, func() bool {
		n := 0
		for _, e := range changes(spine) {
			if e.Payload["table"] == "public.big" {
				n++
			}
		}
		return n == 2000
	})
	stop()
	var st Status
	waitFor(t, "the slot's statistics", 10*time.Second, func() bool {
		out := mustRun(t, env, "status", "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		return st.Slot.Decoding != nil && st.Slot.Decoding.StreamedTransactions > 0
	})
	if d := st.Slot.Decoding; d.SpilledBytes != 0 || d.StreamedBytes == 0 {
		t.Errorf("status --json: decoding %+v, want bytes streamed and none spilled by the server", *d)
	}
	human := mustRun(t, env, "status")
	if !strings.Contains(human, "1 streamed in progress to the agent") || !strings.Contains(human, "0 spilled to the server's disk (0 B)") {
		t.Errorf("status does not show the streamed transaction:\n%s", human)
	}
}
