package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// readEvents counts the spine's READ events.
func readEvents(spine *spinetest.Server) int {
	n := 0
	for _, e := range spine.Events() {
		if e.Payload["operation"] == "READ" {
			n++
		}
	}
	return n
}

// TestBackfillWaitsForDelivery: backfill returns once the agent delivered
// every READ event; without an agent it says delivery is pending (exit 4)
// and status lists the backfill; run again meanwhile it waits for that
// backfill instead of sending every row twice, unless --again.
func TestBackfillWaitsForDelivery(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL()}
	exec(t, dsn, `CREATE TABLE b (id int PRIMARY KEY, v text)`)
	exec(t, dsn, `INSERT INTO b SELECT g, 'row ' || g FROM generate_series(1, 5000) g`)
	mustRun(t, env, "watch", "b", "--kind", "other", "--source", "books")

	// No agent: the rows are written, their delivery pending.
	start := time.Now()
	out, _, err := run(t, env, "backfill", "b", "--chunk-size", "700")
	if code := exitCode(err); code != ExitPending || !strings.Contains(err.Error(), "delivery pending") || !strings.Contains(err.Error(), "pgaudit-cdc run") {
		t.Fatalf("backfill without an agent: exit %d (%v), want %d saying delivery is pending and what delivers it\n%s", code, err, ExitPending, out)
	}
	if waited := time.Since(start); waited < deliveryIdle {
		t.Errorf("gave up after %s, want at least %s without an agent", waited, deliveryIdle)
	}
	st := statusJSON(t, dsn)
	if len(st.Backfills) != 1 || st.Backfills[0].Rows != 5000 || st.Backfills[0].State() != "delivering" {
		t.Fatalf("status lists %+v, want the one backfill of 5000 rows, delivering", st.Backfills)
	}
	human := mustRun(t, env, "status")
	if !strings.Contains(human, "backfill 1 of public.b") || !strings.Contains(human, "5000 rows") {
		t.Errorf("status does not show the pending backfill:\n%s", human)
	}

	// Run again, with the agent up: it waits for backfill 1, writes nothing.
	stop := startAgent(t, env)
	out = mustRun(t, env, "backfill", "b")
	if !strings.Contains(out, "backfill 1 of public.b (5000 rows) is written and its delivery is pending") || !strings.Contains(out, "backfill 1 of public.b delivered") {
		t.Fatalf("second backfill run:\n%s", out)
	}
	if n := readEvents(spine); n != 5000 {
		t.Fatalf("%d READ events once backfill said delivered, want 5000", n)
	}
	if st := statusJSON(t, dsn); len(st.Backfills) != 0 {
		t.Fatalf("status still lists %+v after the delivery", st.Backfills)
	}
	// Delivered: a new run is a new baseline, and waits for it.
	out = mustRun(t, env, "backfill", "b", "--chunk-size", "2000")
	if !strings.Contains(out, "backfill 2 of public.b delivered") || readEvents(spine) != 10000 {
		t.Fatalf("a new baseline after the delivery: %d READ events\n%s", readEvents(spine), out)
	}
	stop()

	// --no-wait, then --again while it is pending.
	out = mustRun(t, env, "backfill", "b", "--no-wait")
	if !strings.Contains(out, "backfill 3 of public.b written") || !strings.Contains(out, "delivery pending") {
		t.Fatalf("--no-wait:\n%s", out)
	}
	_, errOut, err := run(t, env, "backfill", "b", "--again", "--no-wait")
	if err != nil || !strings.Contains(errOut, "second baseline") {
		t.Fatalf("--again: %v\n%s", err, errOut)
	}
	if st := statusJSON(t, dsn); len(st.Backfills) != 2 {
		t.Fatalf("status lists %+v, want backfills 3 and 4", st.Backfills)
	}
}
