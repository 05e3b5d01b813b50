package preflight_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// execAll runs each statement on conn, failing the test on the first error.
func execAll(t *testing.T, conn *pgx.Conn, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// result returns the check named name, or nil.
func result(rs []preflight.Result, name string) *preflight.Result {
	for i := range rs {
		if rs[i].Name == name {
			return &rs[i]
		}
	}
	return nil
}

// expect checks that the check named name has status want ("" for absent)
// and that its detail and fix hold the given words.
func expect(t *testing.T, rs []preflight.Result, name string, want preflight.Status, words ...string) {
	t.Helper()
	r := result(rs, name)
	switch {
	case want == "" && r != nil:
		t.Errorf("check %q: got %s (%s), want none on this version", name, r.Status, r.Detail)
	case want == "":
	case r == nil:
		t.Errorf("check %q: missing, want %s", name, want)
	case r.Status != want:
		t.Errorf("check %q: got %s (%s; fix: %s), want %s", name, r.Status, r.Detail, r.Fix, want)
	default:
		for _, w := range words {
			if !strings.Contains(r.Detail+" "+r.Fix, w) {
				t.Errorf("check %q: %q (fix %q) does not mention %q", name, r.Detail, r.Fix, w)
			}
		}
	}
}

// TestFailoverChecksByVersion: on 17+ the slot is a failover slot and doctor
// checks synchronized_standby_slots once there is a standby; on 16 and
// earlier it says that a failover loses the slot.
func TestFailoverChecksByVersion(t *testing.T) {
	ctx := context.Background()
	version := pgtest.ServerVersionNum(t)
	conn := pgtest.Connect(t, pgtest.DSN(t))
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}

	rs := preflight.Run(ctx, conn, o)
	expect(t, rs, "failover", "")
	if version >= 170000 {
		expect(t, rs, "failover slot", preflight.OK, "will be created")
		expect(t, rs, "synchronized_standby_slots", preflight.OK, "no physical standby")
	} else {
		expect(t, rs, "failover slot", "")
		expect(t, rs, "synchronized_standby_slots", "")
	}

	if err := replication.CreateSlot(ctx, conn, o.Slot); err != nil {
		t.Fatal(err)
	}
	info, err := replication.LookupSlot(ctx, conn, o.Slot)
	if err != nil {
		t.Fatal(err)
	}
	if want := version >= 170000; info.Failover != want {
		t.Errorf("slot created on %d: failover %v, want %v", version, info.Failover, want)
	}

	// A standby's physical slot (no standby needs to be running for it).
	admin := pgtest.Connect(t, pgtest.AdminDSN(t))
	if _, err := admin.Exec(ctx, "SELECT pg_create_physical_replication_slot('doctor_standby')"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "SELECT pg_drop_replication_slot('doctor_standby')") })

	rs = preflight.Run(ctx, conn, o)
	if version >= 170000 {
		expect(t, rs, "failover slot", preflight.OK, "is a failover slot")
		expect(t, rs, "synchronized_standby_slots", preflight.Warn, "'doctor_standby'", "sync_replication_slots = on", "hot_standby_feedback = on", "dbname")
		expect(t, rs, "failover", "")
	} else {
		expect(t, rs, "failover", preflight.Warn, "no slot", "GAP", "PostgreSQL 17")
	}

	// A slot made without failover (before 17, or by an earlier version).
	if version >= 170000 {
		if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot('old_slot', 'pgoutput')"); err != nil {
			t.Fatal(err)
		}
		rs = preflight.Run(ctx, conn, preflight.Options{Slot: "old_slot", Publication: "pgaudit_cdc"})
		expect(t, rs, "failover slot", preflight.Warn, "ALTER_REPLICATION_SLOT old_slot (FAILOVER true)")
	}
}

// TestServerSettingsByVersion starts a server with the settings doctor
// checks on 17+ (synchronized_standby_slots) and 18+
// (idle_replication_slot_timeout); older versions have neither setting, and
// doctor does not check them there.
func TestServerSettingsByVersion(t *testing.T) {
	ctx := context.Background()
	version := pgtest.ServerVersionNum(t)
	if version < 170000 {
		rs := preflight.Run(ctx, pgtest.Connect(t, pgtest.DSN(t)), preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"})
		expect(t, rs, "idle_replication_slot_timeout", "")
		expect(t, rs, "synchronized_standby_slots", "")
		return
	}
	if embedded.ExternalOverride() {
		t.Fatalf("needs a throwaway cluster with its own settings: unset PGAUDIT_TEST_DATABASE_URL")
	}
	settings := []string{"synchronized_standby_slots=standby_a"}
	if version >= 180000 {
		settings = append(settings, "idle_replication_slot_timeout=1h")
	}
	c, err := embedded.StartLocalWith(ctx, settings...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	conn := pgtest.Connect(t, c.AdminURL())
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}

	rs := preflight.Run(ctx, conn, o)
	expect(t, rs, "synchronized_standby_slots", preflight.Fail, "standby_a", "capture stalls", "pg_create_physical_replication_slot")
	if version >= 180000 {
		expect(t, rs, "idle_replication_slot_timeout", preflight.Warn, "1h", "invalidates the slot", "idle_replication_slot_timeout = 0")
	} else {
		expect(t, rs, "idle_replication_slot_timeout", "")
	}

	if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot('standby_a')"); err != nil {
		t.Fatal(err)
	}
	// The slot exists, but no standby streams through it: logical decoding
	// waits for it.
	rs = preflight.Run(ctx, conn, o)
	expect(t, rs, "synchronized_standby_slots", preflight.Warn, "standby_a", "no standby streams through", "synchronized_standby_slots = ''")
}

// TestVirtualGeneratedColumns: on PostgreSQL 18, a published table with
// REPLICA IDENTITY FULL and a virtual generated column refuses UPDATE and
// DELETE; doctor fails for it. Earlier versions have no virtual generated
// columns.
func TestVirtualGeneratedColumns(t *testing.T) {
	ctx := context.Background()
	version := pgtest.ServerVersionNum(t)
	conn := pgtest.Connect(t, pgtest.DSN(t))
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}
	if version < 180000 {
		expect(t, preflight.Run(ctx, conn, o), "virtual generated columns", "")
		return
	}
	execAll(t, conn,
		`CREATE TABLE v (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`,
		`ALTER TABLE v REPLICA IDENTITY FULL`,
		`INSERT INTO v VALUES (1, 1)`,
		`CREATE PUBLICATION pgaudit_cdc FOR TABLE v WITH (publish_generated_columns = stored)`,
	)
	if _, err := conn.Exec(ctx, `UPDATE v SET a = 2`); err == nil || !strings.Contains(err.Error(), "42P10") {
		t.Errorf("UPDATE of a REPLICA IDENTITY FULL table with a virtual generated column on %d: got %v, want SQLSTATE 42P10", version, err)
	}
	expect(t, preflight.Run(ctx, conn, o), "virtual generated columns", preflight.Fail, "public.v", "twice", "STORED", "unwatch")
}
