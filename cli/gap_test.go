package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
)

func queryRow(t *testing.T, dsn, sql string, dest ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(context.Background(), sql).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestGapIsLoudEverywhere drops the slot after capture started, then checks
// what an operator sees: status exits 3 and names the gap, doctor fails,
// run exits 3 without re-creating the slot, and run --accept-gap records one
// GAP event (on stdout here) and carries on; then all is well again.
func TestGapIsLoudEverywhere(t *testing.T) {
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": ""}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY)`)
	mustRun(t, env, "watch", "ledger", "--kind", "other", "--source", "books")
	exec(t, dsn, `SELECT pg_drop_replication_slot('pgaudit_cdc')`)
	exec(t, dsn, `INSERT INTO ledger VALUES (1)`)

	out, _, err := run(t, env, "status")
	if code := exitCode(err); code != ExitGap {
		t.Fatalf("status with a dropped slot: exit %d (%v), want %d\n%s", code, err, ExitGap, out)
	}
	if !strings.Contains(out, "MISSING") || !strings.Contains(err.Error(), "slot_missing") {
		t.Fatalf("status does not say the slot is missing:\n%s\n%v", out, err)
	}
	out, _, err = run(t, env, "doctor")
	if code := exitCode(err); code != 1 || !strings.Contains(out, "FAIL  capture continuity") {
		t.Fatalf("doctor with a dropped slot: exit %d, want 1 with a failed capture continuity check:\n%s", code, out)
	}

	_, _, err = run(t, env, "run", "--metrics-addr", "")
	if code := exitCode(err); code != ExitGap {
		t.Fatalf("run with a dropped slot: exit %d (%v), want %d", code, err, ExitGap)
	}
	if !strings.Contains(err.Error(), "--accept-gap=1") {
		t.Fatalf("run's error does not name the fix: %v", err)
	}
	var exists bool
	queryRow(t, dsn, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgaudit_cdc')`, &exists)
	if exists {
		t.Fatalf("run re-created the slot without consent")
	}
	out, _, err = run(t, env, "status", "--json")
	var st Status
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil || exitCode(err) != ExitGap || st.Capture.PendingGap == nil {
		t.Fatalf("status --json: exit %d, pending gap %v, json error %v:\n%s", exitCode(err), st.Capture.PendingGap, jerr, out)
	}

	// Consent: the GAP event comes first, then capture goes on.
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--accept-gap", "--status-interval", "100ms"})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	waitFor(t, "the GAP event", 30*time.Second, func() bool { return strings.Contains(stdout.String(), `"operation":"GAP"`) })
	exec(t, dsn, `INSERT INTO ledger VALUES (2)`)
	waitFor(t, "the insert after the gap", 30*time.Second, func() bool { return strings.Contains(stdout.String(), `"new":{"id":2}`) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run --accept-gap: %v\n%s", err, stderr.String())
	}
	if strings.Count(stdout.String(), `"operation":"GAP"`) != 1 || strings.Contains(stdout.String(), `"new":{"id":1}`) {
		t.Fatalf("want one GAP event and nothing of the lost insert:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "backfill") {
		t.Fatalf("run --accept-gap does not suggest a backfill:\n%s", stderr.String())
	}
	if out, _, err := run(t, env, "status"); err != nil || !strings.Contains(out, "continuous since") {
		t.Fatalf("status after the gap was accepted: %v\n%s", err, out)
	}
	if _, _, err := run(t, env, "doctor"); err != nil {
		t.Fatalf("doctor after the gap was accepted: %v", err)
	}
}
