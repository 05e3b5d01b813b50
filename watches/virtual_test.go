package watches_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// PostgreSQL 18's virtual generated columns cannot be published, and a
// published table whose replica identity holds one (REPLICA IDENTITY FULL
// holds every column) refuses every UPDATE and DELETE (SQLSTATE 42P10). The
// schema-watch paths must never give such a table FULL: the writers come
// first.

// requirePG18 skips the test below PostgreSQL 18, which has no virtual
// generated columns: version gating, not a missing dependency.
func requirePG18(t *testing.T, d *db) {
	t.Helper()
	if v := d.version(); v < 180000 {
		t.Skipf("PostgreSQL %d has no virtual generated columns (18+)", v/10000)
	}
}

// wantIdentity fails the test unless table has the replica identity want
// (pg_class.relreplident: d DEFAULT, f FULL).
func (d *db) wantIdentity(table, want, when string) {
	d.t.Helper()
	if got := d.identity(table); got != want {
		d.t.Errorf("%s: %s has REPLICA IDENTITY %q, want %q", when, table, got, want)
	}
}

// housekeeping runs the agent's FixReplicaIdentity round; what it says about
// tables with virtual generated columns is a notice, not a failure.
func (d *db) housekeeping() string {
	d.t.Helper()
	_, err := d.reg.FixReplicaIdentity(context.Background())
	var notice *watches.VirtualColumnsNotice
	if err != nil && !errors.As(err, &notice) {
		d.t.Fatalf("FixReplicaIdentity: %v", err)
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// insertOnly runs an INSERT, then an UPDATE and a DELETE that PostgreSQL
// must refuse (a published table with virtual generated columns and no
// primary key), returning the refusals.
func (d *db) insertOnly(table string, id int) string {
	d.t.Helper()
	ctx := context.Background()
	d.exec("INSERT INTO "+table+" (id, a) VALUES ($1, 1)", id)
	var got []string
	for _, sql := range []string{"UPDATE " + table + " SET a = a + 1 WHERE id = $1", "DELETE FROM " + table + " WHERE id = $1"} {
		_, err := d.conn.Exec(ctx, sql, id)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != pgerrcode.ObjectNotInPrerequisiteState && pgErr.Code != pgerrcode.InvalidColumnReference) {
			d.t.Errorf("%s on %s: got %v, want PostgreSQL to refuse it (SQLSTATE 55000 or 42P10)", sql, table, err)
			continue
		}
		got = append(got, pgErr.Message)
	}
	return strings.Join(got, "; ")
}

func wantAll(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: got %q, want it to contain %q", what, got, w)
		}
	}
}

// TestSchemaWatchRefusesVirtualGeneratedColumns: watch --schema over a table
// with a virtual generated column is refused before anything changes, naming
// the table, the column and the fix; with the table watched by itself first
// (--exclude-columns, which takes precedence) the schema watch works, and
// unwatching the table hands it back to the schema watch without FULL.
func TestSchemaWatchRefusesVirtualGeneratedColumns(t *testing.T) {
	d := newDB(t)
	requirePG18(t, d)
	ctx := context.Background()
	d.exec(`CREATE SCHEMA billing`)
	d.exec(`CREATE TABLE billing.plain (id int PRIMARY KEY, a int)`)
	d.exec(`CREATE TABLE billing.priced (id int PRIMARY KEY, a int, price numeric,
		total numeric GENERATED ALWAYS AS (price * a) VIRTUAL)`)

	err := d.reg.WatchSchema(ctx, "billing", "other", "billing")
	if err == nil {
		t.Fatal("watch --schema over a table with a virtual generated column succeeded; want a refusal")
	}
	wantAll(t, "the refusal", err.Error(), "billing.priced (total)", "--exclude-columns", "STORED")
	d.nothingCreated("the refused schema watch")
	d.wantIdentity("billing.plain", "d", "after the refused schema watch")
	d.writes("billing.priced", 1)

	// The fix the refusal names: watch the table by itself first.
	if _, err := d.reg.Watch(ctx, d.mustName("billing.priced"), "other", "priced", watches.Options{ExcludeColumns: []string{"total"}}); err != nil {
		t.Fatalf("watch billing.priced --exclude-columns total: %v", err)
	}
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing"); err != nil {
		t.Fatalf("watch --schema billing with billing.priced watched by itself: %v", err)
	}
	d.wantIdentity("billing.plain", "f", "after the schema watch")
	d.wantIdentity("billing.priced", "d", "after the schema watch")
	d.writes("billing.plain", 2)
	d.writes("billing.priced", 3)

	// Unwatching the table hands it back to the schema watch: a member
	// without column list, but not FULL.
	if ok, err := d.reg.Unwatch(ctx, d.mustName("billing.priced")); err != nil || !ok {
		t.Fatalf("unwatch billing.priced: removed %v, %v", ok, err)
	}
	if !d.member("billing.priced") {
		t.Error("after the unwatch billing.priced left the publication; want it kept for the schema watch")
	}
	d.wantIdentity("billing.priced", "d", "after the unwatch")
	d.writes("billing.priced", 4)
	d.housekeeping()
	d.wantIdentity("billing.priced", "d", "after housekeeping")
	d.writes("billing.priced", 5)
}

// TestSchemaWatchVirtualGeneratedColumnsJoinLater: tables with virtual
// generated columns that join a watched schema later (CREATE TABLE, SET
// SCHEMA, ADD COLUMN ... VIRTUAL on a member) keep, or get back, REPLICA
// IDENTITY DEFAULT so that UPDATE and DELETE keep working, with a warning
// naming the table and the fix. A table of the schema with virtual generated
// columns and no primary key is published all the same, by the event trigger
// and by housekeeping (never left out, so never a silent hole): PostgreSQL
// refuses its UPDATE and DELETE until it has a primary key, and both say so.
// The DDL is never refused (pg_restore adds primary keys after the data).
// Housekeeping never gives such tables FULL.
func TestSchemaWatchVirtualGeneratedColumnsJoinLater(t *testing.T) {
	d := newDB(t)
	requirePG18(t, d)
	ctx := context.Background()
	d.exec(`CREATE SCHEMA billing`)
	d.exec(`CREATE TABLE billing.plain (id int PRIMARY KEY, a int)`)
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing"); err != nil {
		t.Fatalf("watch --schema billing: %v", err)
	}
	d.wantIdentity("billing.plain", "f", "after the schema watch")
	d.takeNotices()

	// CREATE TABLE in the watched schema.
	d.exec(`CREATE TABLE billing.later (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
	wantAll(t, "the warning of CREATE TABLE", d.takeNotices(), "billing.later", "twice", "REPLICA IDENTITY DEFAULT", "STORED")
	if !d.member("billing.later") {
		t.Error("billing.later did not join the publication")
	}
	d.wantIdentity("billing.later", "d", "after CREATE TABLE")
	d.writes("billing.later", 1)

	// SET SCHEMA of a table with REPLICA IDENTITY FULL into the schema.
	d.exec(`CREATE TABLE public.moved (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
	d.exec(`ALTER TABLE public.moved REPLICA IDENTITY FULL`)
	d.exec(`ALTER TABLE public.moved SET SCHEMA billing`)
	wantAll(t, "the warning of SET SCHEMA", d.takeNotices(), "billing.moved", "REPLICA IDENTITY DEFAULT")
	if !d.member("billing.moved") {
		t.Error("billing.moved did not join the publication")
	}
	d.wantIdentity("billing.moved", "d", "after SET SCHEMA")
	d.writes("billing.moved", 2)

	// ADD COLUMN ... VIRTUAL on a member that has FULL.
	d.exec(`ALTER TABLE billing.plain ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) VIRTUAL`)
	wantAll(t, "the warning of ADD COLUMN", d.takeNotices(), "billing.plain", "twice", "REPLICA IDENTITY DEFAULT")
	d.wantIdentity("billing.plain", "d", "after ADD COLUMN ... VIRTUAL")
	d.writes("billing.plain", 3)

	// Without a primary key the table is published all the same (audited,
	// never left out), with a warning: PostgreSQL refuses its UPDATE and
	// DELETE until it has one. The DDL itself is never refused (pg_restore
	// creates tables first and adds their primary keys after the data).
	d.exec(`CREATE TABLE billing.restored (id int, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
	wantAll(t, "the warning of CREATE TABLE without a primary key", d.takeNotices(), "billing.restored", "twice", "no primary key", "audited")
	if !d.member("billing.restored") {
		t.Error("billing.restored is not in the publication; a table of a watched schema must stay audited")
	}
	wantAll(t, "the refused writes of billing.restored", d.insertOnly("billing.restored", 4), `"restored"`)
	d.exec(`ALTER TABLE billing.restored ADD PRIMARY KEY (id)`)
	d.wantIdentity("billing.restored", "d", "after ADD PRIMARY KEY")
	d.writes("billing.restored", 5)
	d.exec(`CREATE TABLE billing.bare (id int, a int)`)
	d.wantIdentity("billing.bare", "f", "after CREATE TABLE")
	d.writes("billing.bare", 4)
	d.takeNotices()

	// Re-watching the schema (another source) is not refused for the tables
	// that joined since, and gives them no FULL.
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing-2"); err != nil {
		t.Fatalf("re-watch of schema billing: %v", err)
	}

	// Housekeeping gives none of them FULL.
	d.housekeeping()
	for _, table := range []string{"billing.later", "billing.moved", "billing.plain"} {
		d.wantIdentity(table, "d", "after housekeeping")
	}
	for i, table := range []string{"billing.later", "billing.moved", "billing.plain", "billing.bare"} {
		d.writes(table, 10+i)
	}

	// Without the event trigger, housekeeping adds the table with DEFAULT,
	// giving back DEFAULT where it had FULL, and says so.
	d.exec(`DROP EVENT TRIGGER pgaudit_cdc_replica_identity`)
	d.exec(`CREATE TABLE billing.quiet (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
	d.exec(`ALTER TABLE billing.quiet REPLICA IDENTITY FULL`)
	wantAll(t, "housekeeping's notice", d.housekeeping(), "billing.quiet", "twice", "STORED")
	if !d.member("billing.quiet") {
		t.Error("housekeeping did not add billing.quiet to the publication")
	}
	d.wantIdentity("billing.quiet", "d", "after housekeeping")
	d.writes("billing.quiet", 20)

	// Without the event trigger a table without a primary key is published
	// with its schema all the same, never left out: PostgreSQL refuses its
	// UPDATE and DELETE, loudly, and housekeeping says so with the fixes.
	d.exec(`CREATE TABLE billing.nokey (id int, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
	d.exec(`ALTER TABLE billing.bare ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) VIRTUAL`)
	notice := d.housekeeping()
	for _, table := range []string{"billing.nokey", "billing.bare"} {
		wantAll(t, "housekeeping's notice", notice, table+" is published with its watched schema",
			"PostgreSQL refuses its UPDATE and DELETE", "no primary key", "STORED", "event trigger", "setup --print-sql")
		if !d.member(table) {
			t.Errorf("%s is not in the publication after housekeeping; a table of a watched schema must stay audited", table)
		}
	}
	wantAll(t, "the refused writes of billing.nokey", d.insertOnly("billing.nokey", 21), `"nokey"`, "replica identity")
	d.insertOnly("billing.bare", 22)
	if again := d.housekeeping(); strings.Contains(again, "billing.nokey") || strings.Contains(again, "billing.bare") {
		t.Errorf("a second housekeeping round named the tables again: %q", again)
	}
	for _, table := range []string{"billing.nokey", "billing.bare"} {
		if !d.member(table) {
			t.Errorf("a second housekeeping round took %s out of the publication", table)
		}
	}
	// The fix the notice names: a primary key, and the writes work.
	d.exec(`ALTER TABLE billing.nokey ADD PRIMARY KEY (id)`)
	d.housekeeping()
	d.wantIdentity("billing.nokey", "d", "after ADD PRIMARY KEY and housekeeping")
	d.writes("billing.nokey", 23)
}

// TestSchemaWatchUnwatchKeepsVirtualTableWithoutKey: unwatching a table of
// a watched schema that got virtual generated columns while watched by
// itself, and has no primary key, leaves it in the publication for the
// schema watch: never left out unaudited.
func TestSchemaWatchUnwatchKeepsVirtualTableWithoutKey(t *testing.T) {
	d := newDB(t)
	requirePG18(t, d)
	ctx := context.Background()
	d.exec(`CREATE SCHEMA billing`)
	d.exec(`CREATE TABLE billing.solo (id int, a int)`)
	if _, err := d.reg.Watch(ctx, d.mustName("billing.solo"), "other", "solo"); err != nil {
		t.Fatalf("watch billing.solo: %v", err)
	}
	if err := d.reg.WatchSchema(ctx, "billing", "other", "billing"); err != nil {
		t.Fatalf("watch --schema billing: %v", err)
	}
	d.takeNotices()
	// Watched by itself: a warning, not a refusal.
	d.exec(`ALTER TABLE billing.solo ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) VIRTUAL`)
	wantAll(t, "the warning of ADD COLUMN", d.takeNotices(), "billing.solo", "twice", "primary key")
	if ok, err := d.reg.Unwatch(ctx, d.mustName("billing.solo")); err != nil || !ok {
		t.Fatalf("unwatch billing.solo: removed %v, %v", ok, err)
	}
	if !d.member("billing.solo") {
		t.Error("after the unwatch billing.solo left the publication; want it kept for the schema watch")
	}
	d.housekeeping()
	if !d.member("billing.solo") {
		t.Error("housekeeping took billing.solo out of the publication")
	}
}

// TestSchemaWatchVirtualColumnAddedToWatchedTable: a table watched by
// itself (REPLICA IDENTITY FULL) that gets a virtual generated column keeps
// accepting UPDATE and DELETE: the event trigger, or housekeeping where it is
// not installed, gives it back REPLICA IDENTITY DEFAULT, and housekeeping
// does not restore FULL.
func TestSchemaWatchVirtualColumnAddedToWatchedTable(t *testing.T) {
	d := newDB(t)
	requirePG18(t, d)
	ctx := context.Background()
	for _, table := range []string{"orders", "quiet_orders"} {
		d.exec(`CREATE TABLE ` + table + ` (id int PRIMARY KEY, a int)`)
		if _, err := d.reg.Watch(ctx, d.mustName(table), "other", table); err != nil {
			t.Fatalf("watch %s: %v", table, err)
		}
		d.wantIdentity(table, "f", "after the watch")
	}
	d.takeNotices()

	d.exec(`ALTER TABLE orders ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) VIRTUAL`)
	wantAll(t, "the warning of ADD COLUMN", d.takeNotices(), "orders", "twice", "REPLICA IDENTITY DEFAULT", "STORED")
	d.wantIdentity("orders", "d", "after ADD COLUMN ... VIRTUAL")
	d.writes("orders", 1)
	d.housekeeping()
	d.wantIdentity("orders", "d", "after housekeeping")
	d.writes("orders", 2)

	// Without the event trigger, housekeeping relieves the table.
	d.exec(`DROP EVENT TRIGGER pgaudit_cdc_replica_identity`)
	d.exec(`ALTER TABLE quiet_orders ADD COLUMN twice int GENERATED ALWAYS AS (a * 2) VIRTUAL`)
	wantAll(t, "housekeeping's notice", d.housekeeping(), "quiet_orders", "twice", "REPLICA IDENTITY DEFAULT")
	d.wantIdentity("quiet_orders", "d", "after housekeeping")
	d.writes("quiet_orders", 3)
	d.housekeeping()
	d.wantIdentity("quiet_orders", "d", "after a second housekeeping round")
}

// TestSchemaWatchRefusedWatchChangesNothing: a watch or schema watch that is
// refused leaves a fresh database as it was: no replication slot (which
// would retain WAL), no publication, no event trigger, no registry rows.
func TestSchemaWatchRefusedWatchChangesNothing(t *testing.T) {
	d := newDB(t)
	v := d.version()
	ctx := context.Background()

	_, err := d.reg.Watch(ctx, d.mustName("missing"), "other", "s")
	if !errors.Is(err, watches.ErrTableNotFound) {
		t.Fatalf("watch of a missing table: got %v, want ErrTableNotFound", err)
	}
	d.nothingCreated("the watch of a missing table")

	d.exec(`CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, a int)`)
	if _, err := d.reg.Watch(ctx, d.mustName("scratch"), "other", "s"); err == nil || !strings.Contains(err.Error(), "unlogged") {
		t.Fatalf("watch of an unlogged table: got %v, want a refusal", err)
	}
	d.nothingCreated("the watch of an unlogged table")

	if err := d.reg.WatchSchema(ctx, "nosuch", "other", "s"); err == nil {
		t.Fatal("watch --schema of a missing schema succeeded")
	}
	d.nothingCreated("the watch of a missing schema")

	d.exec(`CREATE TABLE orders (id int PRIMARY KEY, a int, status text)`)
	if v >= 150000 {
		for _, o := range []watches.Options{
			{RowFilter: "no_such_column > 1"},
			{RowFilter: "status = (SELECT 'x')"},
			{Columns: []string{"no_such_column"}},
		} {
			if _, err := d.reg.Watch(ctx, d.mustName("orders"), "other", "s", o); err == nil {
				t.Fatalf("watch with %+v succeeded; want a refusal", o)
			}
			d.nothingCreated("a watch refused for its options")
		}
	} else {
		// PostgreSQL 14 has no row filters or column lists: refused, naming
		// the version, before anything is created.
		for _, o := range []watches.Options{{RowFilter: "a > 1"}, {Columns: []string{"a"}}, {ExcludeColumns: []string{"status"}}} {
			if _, err := d.reg.Watch(ctx, d.mustName("orders"), "other", "s", o); err == nil || !strings.Contains(err.Error(), "PostgreSQL 15") {
				t.Fatalf("PostgreSQL 14: watch with %+v: got %v, want a refusal naming PostgreSQL 15", o, err)
			}
			d.nothingCreated("a watch refused on PostgreSQL 14 for its options")
		}
	}
	if v >= 180000 {
		d.exec(`CREATE SCHEMA billing`)
		d.exec(`CREATE TABLE billing.v (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL)`)
		if _, err := d.reg.Watch(ctx, d.mustName("billing.v"), "other", "s"); err == nil {
			t.Fatal("watch of a table with a virtual generated column succeeded")
		}
		d.nothingCreated("the watch of a table with a virtual generated column")
		if err := d.reg.WatchSchema(ctx, "billing", "other", "s"); err == nil {
			t.Fatal("watch --schema over a table with a virtual generated column succeeded")
		}
		d.nothingCreated("the schema watch over a table with a virtual generated column")
	}

	// A watch that is carried out creates the slot, so capture starts now.
	if _, err := d.reg.Watch(ctx, d.mustName("orders"), "other", "s"); err != nil {
		t.Fatalf("watch orders: %v", err)
	}
	var slots int
	if err := d.conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 1 {
		t.Errorf("after a watch: %d replication slots, want 1", slots)
	}
}
