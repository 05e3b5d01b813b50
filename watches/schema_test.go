package watches_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// members returns the tables outside pgaudit_cdc that are members of the
// publication by themselves, sorted, as regclass text.
func (d *db) members() string {
	d.t.Helper()
	rows, err := d.conn.Query(context.Background(), `SELECT pr.prrelid::regclass::text FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid
		WHERE p.pubname = $1 AND pr.prrelid::regclass::text NOT LIKE 'pgaudit_cdc.%' ORDER BY 1`, testPub)
	if err != nil {
		d.t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		d.t.Fatal(err)
	}
	return strings.Join(names, " ")
}

// columnListed reports whether table's membership has a column list
// (PostgreSQL 15+).
func (d *db) columnListed(table string) bool {
	d.t.Helper()
	var listed bool
	if err := d.conn.QueryRow(context.Background(), `SELECT pr.prattrs IS NOT NULL FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = $2::regclass`, testPub, table).Scan(&listed); err != nil {
		d.t.Fatal(err)
	}
	return listed
}

func (d *db) wantMembers(want, when string) {
	d.t.Helper()
	if got := d.members(); got != want {
		d.t.Fatalf("%s: publication members %q, want %q", when, got, want)
	}
}

// TestSchemaWatchMembershipOnEveryVersion: on every version of the matrix,
// PostgreSQL 14 included, a schema watch makes each table of the schema
// (partitions too) a member of the publication by itself, with REPLICA
// IDENTITY FULL, beside per-table watches of the kinds the server has: on
// 14, --on-columns (a column-controlled watch is refused there, naming
// PostgreSQL 15, and changes nothing); on 15+, --exclude-columns too, which
// takes precedence. Re-watch, unwatch of either, the DDL event trigger and
// housekeeping (for tables created without the trigger) keep the membership
// right.
func TestSchemaWatchMembershipOnEveryVersion(t *testing.T) {
	d := newDB(t)
	v := d.version()
	ctx := context.Background()
	d.exec(`CREATE SCHEMA billing`)
	d.exec(`CREATE TABLE billing.a (id int PRIMARY KEY, status text, secret text)`)
	d.exec(`CREATE TABLE billing.b (id int PRIMARY KEY, status text, secret text)`)
	d.exec(`CREATE TABLE billing.r (id int PRIMARY KEY, v int) PARTITION BY RANGE (id)`)
	d.exec(`CREATE TABLE billing.r1 PARTITION OF billing.r FOR VALUES FROM (0) TO (100)`)
	d.exec(`CREATE UNLOGGED TABLE billing.scratch (id int PRIMARY KEY)`)
	d.exec(`CREATE TABLE public.u (id int PRIMARY KEY, status text)`)

	// A per-table watch in the schema, then the schema.
	if _, err := d.reg.Watch(ctx, d.mustName("billing.b"), "other", "b", watches.Options{OnColumns: []string{"status"}}); err != nil {
		t.Fatalf("watch billing.b --on-columns status: %v", err)
	}
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing"); err != nil {
		t.Fatalf("watch --schema billing on PostgreSQL %d: %v", v/10000, err)
	}
	all := "billing.a billing.b billing.r billing.r1"
	d.wantMembers(all, "after the schema watch")
	for _, table := range []string{"billing.a", "billing.b", "billing.r", "billing.r1"} {
		d.wantIdentity(table, "f", "after the schema watch")
	}
	d.wantIdentity("public.u", "d", "after the schema watch")

	// A column-controlled watch in the schema: refused on 14, precedence on
	// 15+.
	exclude := watches.Options{ExcludeColumns: []string{"secret"}}
	_, err := d.reg.Watch(ctx, d.mustName("billing.a"), "other", "a", exclude)
	if v < 150000 {
		if err == nil || !strings.Contains(err.Error(), "PostgreSQL 15") {
			t.Fatalf("PostgreSQL 14: watch billing.a --exclude-columns: got %v, want a refusal naming PostgreSQL 15", err)
		}
		d.wantIdentity("billing.a", "f", "after the refused watch")
	} else {
		if err != nil {
			t.Fatalf("watch billing.a --exclude-columns beside the schema watch: %v", err)
		}
		if !d.columnListed("billing.a") {
			t.Error("billing.a: want its own column list, which takes precedence over the schema watch")
		}
		d.wantIdentity("billing.a", "d", "after the column-controlled watch")
	}
	d.wantMembers(all, "after the watch of billing.a")

	// Re-watching the schema changes no membership.
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing-2"); err != nil {
		t.Fatalf("re-watch --schema billing: %v", err)
	}
	d.wantMembers(all, "after the re-watch")
	if v >= 150000 && !d.columnListed("billing.a") {
		t.Error("the re-watch of the schema replaced billing.a's column list")
	}

	// Unwatching a table of the schema hands it back to the schema watch.
	for _, table := range []string{"billing.a", "billing.b"} {
		ok, err := d.reg.Unwatch(ctx, d.mustName(table))
		if err != nil || ok != (table == "billing.b" || v >= 150000) {
			t.Fatalf("unwatch %s: removed %v, %v", table, ok, err)
		}
		d.wantIdentity(table, "f", "after the unwatch of "+table)
	}
	d.wantMembers(all, "after the unwatch of the tables")
	if v >= 150000 && d.columnListed("billing.a") {
		t.Error("billing.a kept its column list after its unwatch; want it a plain member for the schema watch")
	}

	// The event trigger adds a new table, partitions included, in its
	// DDL's transaction.
	d.exec(`CREATE TABLE billing.soon (v int)`)
	d.exec(`CREATE TABLE billing.r3 PARTITION OF billing.r FOR VALUES FROM (300) TO (400)`)
	all = "billing.a billing.b billing.r billing.r1 billing.r3 billing.soon"
	d.wantMembers(all, "after CREATE TABLE with the event trigger")
	d.wantIdentity("billing.soon", "f", "after CREATE TABLE with the event trigger")
	d.wantIdentity("billing.r3", "f", "after CREATE TABLE with the event trigger")
	d.writes2("billing.soon")

	// Without the event trigger, housekeeping adds a new table.
	d.exec(`DROP EVENT TRIGGER ` + watches.EventTriggerName)
	d.exec(`CREATE TABLE billing.later (v int)`)
	d.exec(`CREATE TABLE billing.r2 PARTITION OF billing.r FOR VALUES FROM (100) TO (200)`)
	d.wantMembers(all, "before housekeeping")
	d.housekeeping()
	d.wantMembers("billing.a billing.b billing.later billing.r billing.r1 billing.r2 billing.r3 billing.soon", "after housekeeping")
	d.wantIdentity("billing.later", "f", "after housekeeping")
	d.wantIdentity("billing.r2", "f", "after housekeeping")
	d.writes2("billing.later")

	// A per-table watch outside the schema, then the schema's unwatch: only
	// it stays.
	if _, err := d.reg.Watch(ctx, d.mustName("public.u"), "other", "u"); err != nil {
		t.Fatalf("watch public.u: %v", err)
	}
	if ok, err := d.reg.UnwatchSchema(ctx, "billing"); err != nil || !ok {
		t.Fatalf("unwatch --schema billing: removed %v, %v", ok, err)
	}
	d.wantMembers("u", "after the unwatch of the schema")
}

// writes2 runs an INSERT, an UPDATE and a DELETE on a table without primary
// key (v int): PostgreSQL refuses UPDATE and DELETE of a published table
// without a replica identity, so this checks FULL is in place.
func (d *db) writes2(table string) {
	d.t.Helper()
	d.exec("INSERT INTO " + table + " (v) VALUES (1)")
	d.exec("UPDATE " + table + " SET v = 2")
	d.exec("DELETE FROM " + table)
}
