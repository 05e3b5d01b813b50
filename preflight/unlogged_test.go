package preflight_test

import (
	"context"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// TestUnloggedPartitionFails: an UNLOGGED partition of a watched table
// (possible only without the event triggers, which keep it LOGGED) fails
// doctor, naming the table and the fix; once LOGGED the check is quiet. A
// foreign-table partition fails it too.
func TestUnloggedPartitionFails(t *testing.T) {
	ctx := context.Background()
	conn := pgtest.Connect(t, pgtest.DSN(t))
	execAll(t, conn,
		`CREATE TABLE pt (id int PRIMARY KEY) PARTITION BY RANGE (id)`,
		`CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (10)`,
	)
	name, err := watches.ParseTableName("pt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, "pgaudit_cdc", "pgaudit_cdc").Watch(ctx, name, "other", "books"); err != nil {
		t.Fatal(err)
	}
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}
	expect(t, preflight.Run(ctx, conn, o), "unlogged partitions", "")
	execAll(t, conn,
		`DROP EVENT TRIGGER `+watches.EventTriggerName,
		`ALTER TABLE pt1 SET UNLOGGED`,
	)
	expect(t, preflight.Run(ctx, conn, o), "unlogged partitions", preflight.Fail, "public.pt1", "not in the audit trail", "ALTER TABLE public.pt1 SET LOGGED")
	if _, err := conn.Exec(ctx, `ALTER TABLE pt1 SET LOGGED`); err != nil {
		t.Fatal(err)
	}
	expect(t, preflight.Run(ctx, conn, o), "unlogged partitions", "")

	// A partition whose TRUNCATE trigger its owner dropped (without the
	// event trigger on DROP TRIGGER, which puts it back).
	expect(t, preflight.Run(ctx, conn, o), "partition TRUNCATE triggers", "")
	execAll(t, conn,
		`DROP EVENT TRIGGER `+watches.TriggerDroppedName,
		`DROP TRIGGER pgaudit_cdc_truncate ON pt1`,
	)
	expect(t, preflight.Run(ctx, conn, o), "partition TRUNCATE triggers", preflight.Fail, "TRUNCATE of public.pt1", "not be in the audit trail", "owner of schema pgaudit_cdc")

	// A foreign table as a partition (of a partitioned table without a
	// unique index: PostgreSQL refuses one otherwise). A wrapper without a
	// handler is enough to create one: no extension needed.
	if _, err := conn.Exec(ctx, `CREATE TABLE fpt (id int, v text) PARTITION BY RANGE (id)`); err != nil {
		t.Fatal(err)
	}
	if name, err = watches.ParseTableName("fpt"); err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, "pgaudit_cdc", "pgaudit_cdc").Watch(ctx, name, "other", "books"); err != nil {
		t.Fatal(err)
	}
	execAll(t, conn,
		`CREATE FOREIGN DATA WRAPPER nowhere`,
		`CREATE SERVER elsewhere FOREIGN DATA WRAPPER nowhere`,
		`CREATE FOREIGN TABLE fpt1 PARTITION OF fpt FOR VALUES FROM (0) TO (10) SERVER elsewhere`,
	)
	expect(t, preflight.Run(ctx, conn, o), "foreign partitions", preflight.Fail, "public.fpt1", "another server", "DETACH PARTITION public.fpt1")
}

// TestInheritingTableFails: a table that inherits from a watched table and
// is not watched (possible only without the event triggers, until the
// agent's housekeeping watches it) fails doctor, naming both tables.
func TestInheritingTableFails(t *testing.T) {
	ctx := context.Background()
	conn := pgtest.Connect(t, pgtest.DSN(t))
	if _, err := conn.Exec(ctx, `CREATE TABLE acc (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	name, err := watches.ParseTableName("acc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, "pgaudit_cdc", "pgaudit_cdc").Watch(ctx, name, "other", "books"); err != nil {
		t.Fatal(err)
	}
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}
	execAll(t, conn,
		`DROP EVENT TRIGGER `+watches.EventTriggerName,
		`CREATE TABLE kid () INHERITS (acc)`,
	)
	expect(t, preflight.Run(ctx, conn, o), "inheriting tables", preflight.Fail, "public.kid inherits from watched public.acc", "pgaudit-cdc watch public.kid")
	if _, err := conn.Exec(ctx, `SELECT pgaudit_cdc.sync_watch_names()`); err != nil {
		t.Fatal(err)
	}
	expect(t, preflight.Run(ctx, conn, o), "inheriting tables", "")
}
