package preflight_test

import (
	"context"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// TestSlotMissingAfterCaptureStarted: once capture started, a missing slot
// is a gap: doctor's "slot" check fails and names `run --accept-gap`, and
// never says the slot "will be created".
func TestSlotMissingAfterCaptureStarted(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}
	expect(t, preflight.Run(ctx, conn, o), "slot", preflight.OK, "will be created")

	if _, err := migrations.Apply(ctx, conn); err != nil {
		t.Fatal(err)
	}
	expect(t, preflight.Run(ctx, conn, o), "slot", preflight.OK, "will be created")
	sys, timeline, err := replication.Identify(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := capture.Ensure(ctx, conn, capture.Options{Slot: o.Slot, SystemID: sys, Timeline: timeline}); err != nil {
		t.Fatal(err)
	}
	rs := preflight.Run(ctx, conn, o)
	expect(t, rs, "slot", preflight.OK, "exists")
	expect(t, rs, "capture continuity", preflight.OK)

	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot('pgaudit_cdc')`); err != nil {
		t.Fatal(err)
	}
	rs = preflight.Run(ctx, conn, o)
	expect(t, rs, "slot", preflight.Fail, "missing although capture started", "`pgaudit-cdc run`", "--accept-gap=ID", "backfill")
	expect(t, rs, "capture continuity", preflight.Fail, "slot_missing")
	if r := result(rs, "slot"); r != nil && strings.Contains(r.Detail+r.Fix, "will be created") {
		t.Errorf("slot check offers to create the slot again: %+v", *r)
	}
	if !preflight.Failed(rs) {
		t.Errorf("doctor does not fail with the slot missing after capture started")
	}
}
