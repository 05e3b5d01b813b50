package agent_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Schema-wide watches and per-table watches of every kind share one
// publication (issue 15): each table is a member by itself, so PostgreSQL's
// rules for FOR TABLES IN SCHEMA (no column lists in the publication, row
// filters ignored in the schema) never apply.

// tableVariant is one kind of per-table watch.
type tableVariant struct {
	name string
	opts watches.Options
}

var tableVariants = []tableVariant{
	{"plain", watches.Options{}},
	{"where", watches.Options{RowFilter: "status <> 'draft'"}},
	{"columns", watches.Options{Columns: []string{"status"}}},
	{"exclude-columns", watches.Options{ExcludeColumns: []string{"secret"}}},
	{"on-columns", watches.Options{OnColumns: []string{"status"}}},
}

// schemaWatchVersion returns the server's version. Schema-wide watches work
// on every version of the matrix, 14 included: per-table membership needs
// nothing 14 lacks. What 14 lacks is row filters and column lists, so on 14
// the tests check that the per-table watches needing them (--where,
// --columns, --exclude-columns) are refused, naming PostgreSQL 15, and that
// the schema watch beside them is unaffected.
func schemaWatchVersion(t *testing.T, h *harness) int {
	t.Helper()
	var v int
	if err := h.conn.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// needs15 reports whether a per-table watch with o needs PostgreSQL 15 (row
// filters, column lists).
func needs15(o watches.Options) bool {
	return o.RowFilter != "" || len(o.Columns) > 0 || len(o.ExcludeColumns) > 0
}

// refusedBefore15 checks, on PostgreSQL 14, that the watch of table with o
// (which needs 15) is refused naming PostgreSQL 15, without privileges
// blamed, and that the table has no active per-table watch afterwards.
func (h *harness) refusedBefore15(table, source string, o watches.Options) {
	h.t.Helper()
	err := h.watchWith(table, "other", source, o)
	if err == nil || !strings.Contains(err.Error(), "PostgreSQL 15") || strings.Contains(err.Error(), "must own") {
		h.t.Fatalf("PostgreSQL 14: watch %s %+v: got %v, want a refusal naming PostgreSQL 15", table, o, err)
	}
	ctx := context.Background()
	var registry bool
	if err := h.conn.QueryRow(ctx, "SELECT to_regclass('pgaudit_cdc.watches') IS NOT NULL").Scan(&registry); err != nil {
		h.t.Fatal(err)
	}
	if !registry {
		return
	}
	var n int
	if err := h.conn.QueryRow(ctx, `SELECT count(*) FROM pgaudit_cdc.watches WHERE active AND table_oid = $1::regclass`, table).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	if n != 0 {
		h.t.Fatalf("PostgreSQL 14: the refused watch of %s was registered", table)
	}
}

// members returns the tables that are members of the test's publication by
// themselves, outside pgaudit_cdc, as regclass text, sorted.
func (h *harness) members() string {
	h.t.Helper()
	rows, err := h.conn.Query(context.Background(), `SELECT prrelid::regclass::text FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND prrelid::regclass::text NOT LIKE 'pgaudit_cdc.%' ORDER BY 1`, testPub)
	if err != nil {
		h.t.Fatal(err)
	}
	members, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		h.t.Fatal(err)
	}
	return strings.Join(members, " ")
}

// rowFilterVersion skips the test on a server without row filters and
// column lists (PostgreSQL 14), after checking that watch says so.
func rowFilterVersion(t *testing.T, h *harness) int {
	t.Helper()
	var v int
	if err := h.conn.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v < 150000 {
		h.exec(`CREATE TABLE IF NOT EXISTS version_probe (id int PRIMARY KEY, secret text)`)
		for _, o := range []watches.Options{{RowFilter: "id > 1"}, {ExcludeColumns: []string{"secret"}}} {
			if err := h.watchWith("version_probe", "other", "s", o); err == nil || !strings.Contains(err.Error(), "need PostgreSQL 15") {
				t.Fatalf("PostgreSQL %d: watch %+v: got %v, want a refusal naming PostgreSQL 15", v/10000, o, err)
			}
		}
		t.Skipf("PostgreSQL %d has no row filters or column lists: --where, --columns and --exclude-columns need PostgreSQL 15 (the refusal is checked above)", v/10000)
	}
	return v
}

// render writes an event as "table source OPERATION id new=keys old=keys"
// (keys sorted, "-" when absent), which shows which columns left the
// database without depending on values.
func render(t *testing.T, e spinetest.Event) string {
	t.Helper()
	keys := func(v any) string {
		m, ok := v.(map[string]any)
		if !ok {
			return "-"
		}
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return strings.Join(ks, ",")
	}
	id := field(t, e, "new", "id")
	if id == nil {
		id = field(t, e, "old", "id")
	}
	return fmt.Sprintf("%v %s %v %v new=%s old=%s", field(t, e, "table"), e.Source, field(t, e, "operation"), id,
		keys(field(t, e, "new")), keys(field(t, e, "old")))
}

const allColumns = "id,note,secret,status"

// burst writes the same four changes to table: two inserts (a is a draft),
// an update of note only, an update of status.
func (h *harness) burst(table string, a, b int) {
	h.t.Helper()
	h.exec(fmt.Sprintf(`INSERT INTO %s VALUES (%d, 'draft', 's%d', 'n')`, table, a, a))
	h.exec(fmt.Sprintf(`INSERT INTO %s VALUES (%d, 'final', 's%d', 'n')`, table, b, b))
	h.exec(fmt.Sprintf(`UPDATE %s SET note = 'changed' WHERE id = %d`, table, b))
	h.exec(fmt.Sprintf(`UPDATE %s SET status = 'void' WHERE id = %d`, table, b))
}

// burstEvents is what burst must produce under a watch with options o
// (the zero Options for a schema-wide watch).
func burstEvents(table, source string, o watches.Options, a, b int) []string {
	cols, old := allColumns, allColumns
	switch {
	case len(o.Columns) > 0:
		cols, old = "id,status", "-" // an UPDATE that keeps the key has no old row
	case len(o.ExcludeColumns) > 0:
		cols, old = "id,note,status", "-"
	}
	ev := func(op string, id int, old string) string {
		return fmt.Sprintf("%s %s %s %d new=%s old=%s", table, source, op, id, cols, old)
	}
	var out []string
	if o.RowFilter == "" {
		out = append(out, ev("INSERT", a, "-"))
	}
	out = append(out, ev("INSERT", b, "-"))
	if len(o.OnColumns) == 0 { // the note-only update
		out = append(out, ev("UPDATE", b, old))
	}
	return append(out, ev("UPDATE", b, old))
}

// phases checks the events in order, phase by phase.
type phases struct {
	h    *harness
	seen int
}

func (p *phases) expect(what string, want ...[]string) {
	p.h.t.Helper()
	var flat []string
	for _, w := range want {
		flat = append(flat, w...)
	}
	evs := p.h.waitEvents(p.seen+len(flat), 30*time.Second)
	var got []string
	for _, e := range evs[p.seen:] {
		got = append(got, render(p.h.t, e))
	}
	if strings.Join(got, "\n") != strings.Join(flat, "\n") {
		p.h.t.Fatalf("%s:\ngot\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(flat, "\n  "))
	}
	p.seen += len(flat)
}

func (p *phases) done() {
	p.h.t.Helper()
	p.h.expectExactly(p.seen, 500*time.Millisecond)
}

func one(s string) []string { return []string{s} }

// noSchemaMembers checks that the publication holds no FOR TABLES IN SCHEMA
// member (PostgreSQL 14 has no such members, nor pg_publication_namespace).
func (h *harness) noSchemaMembers() {
	h.t.Helper()
	var catalog bool
	if err := h.conn.QueryRow(context.Background(), "SELECT to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL").Scan(&catalog); err != nil {
		h.t.Fatal(err)
	}
	if !catalog {
		return
	}
	var n int
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_namespace pn
		JOIN pg_publication p ON p.oid = pn.pnpubid WHERE p.pubname = $1`, testPub).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	if n != 0 {
		h.t.Fatalf("publication %s holds %d FOR TABLES IN SCHEMA members, want none", testPub, n)
	}
}

func (h *harness) watchSchema(schema, source string) {
	h.t.Helper()
	if err := newRegistry(h).WatchSchema(context.Background(), schema, "other", source); err != nil {
		h.t.Fatalf("watch --schema %s: %v", schema, err)
	}
}

func (h *harness) unwatchSchema(schema string) {
	h.t.Helper()
	if ok, err := newRegistry(h).UnwatchSchema(context.Background(), schema); err != nil || !ok {
		h.t.Fatalf("unwatch --schema %s: removed %v, %v", schema, ok, err)
	}
}

func (h *harness) mustWatch(table, source string, o watches.Options) {
	h.t.Helper()
	if err := h.watchWith(table, "other", source, o); err != nil {
		h.t.Fatalf("watch %s %+v: %v", table, o, err)
	}
}

// TestSchemaWatchWithEveryTableWatch watches a schema and tables, one inside
// the schema and one outside, with each kind of per-table watch, in both
// orders; then re-watches and unwatches each, checking after every step
// which changes reach the spine, labelled by which watch, with which columns.
// On PostgreSQL 14 the kinds it cannot do (--where, --columns,
// --exclude-columns) are refused, and the schema watch works beside the
// refusals (schemaWatchBesideRefused).
func TestSchemaWatchWithEveryTableWatch(t *testing.T) {
	for _, v := range tableVariants {
		for _, tableFirst := range []bool{true, false} {
			order := "schema-first"
			if tableFirst {
				order = "table-first"
			}
			t.Run(v.name+"/"+order, func(t *testing.T) {
				h := newHarness(t)
				version := schemaWatchVersion(t, h)
				h.exec(`CREATE SCHEMA billing`)
				h.exec(`CREATE TABLE public.u (id int PRIMARY KEY, status text, secret text, note text)`)
				h.exec(`CREATE TABLE billing.t (id int PRIMARY KEY, status text, secret text, note text)`)
				h.exec(`CREATE TABLE billing.other (id int PRIMARY KEY, status text, secret text, note text)`)
				if version < 150000 && needs15(v.opts) {
					schemaWatchBesideRefused(h, v, tableFirst)
					return
				}
				if tableFirst {
					h.mustWatch("public.u", "u", v.opts)
					h.mustWatch("billing.t", "t", v.opts)
					h.watchSchema("billing", "schema")
				} else {
					h.watchSchema("billing", "schema")
					h.mustWatch("public.u", "u", v.opts)
					h.mustWatch("billing.t", "t", v.opts)
				}
				h.noSchemaMembers()
				h.startAgent()
				p := &phases{h: h}
				plain := watches.Options{}

				// Both watches apply, the per-table one first.
				h.burst("public.u", 1, 2)
				h.burst("billing.t", 1, 2)
				h.burst("billing.other", 1, 2)
				// A table created later joins in its own transaction.
				h.exec(`BEGIN; CREATE TABLE billing.later (id int PRIMARY KEY, status text, secret text, note text);
					INSERT INTO billing.later VALUES (1, 'new', 's', 'n'); COMMIT`)
				p.expect("watched", burstEvents("public.u", "u", v.opts, 1, 2), burstEvents("billing.t", "t", v.opts, 1, 2),
					burstEvents("billing.other", "schema", plain, 1, 2),
					one("billing.later schema INSERT 1 new="+allColumns+" old=-"))

				// Re-watch each with a new source: definitions unchanged.
				h.mustWatch("public.u", "u2", v.opts)
				h.mustWatch("billing.t", "t2", v.opts)
				h.watchSchema("billing", "schema2")
				h.noSchemaMembers()
				h.burst("public.u", 3, 4)
				h.burst("billing.t", 3, 4)
				h.burst("billing.other", 3, 4)
				p.expect("re-watched", burstEvents("public.u", "u2", v.opts, 3, 4), burstEvents("billing.t", "t2", v.opts, 3, 4),
					burstEvents("billing.other", "schema2", plain, 3, 4))

				if tableFirst {
					// Unwatch the table: the schema watch takes over, with
					// every column and row.
					h.unwatch("billing.t")
					h.burst("billing.t", 5, 6)
					p.expect("table unwatched, schema watched", burstEvents("billing.t", "schema2", plain, 5, 6))
					// Watch it again: its own watch takes precedence again.
					h.mustWatch("billing.t", "t3", v.opts)
					h.burst("billing.t", 7, 8)
					p.expect("table watched again", burstEvents("billing.t", "t3", v.opts, 7, 8))
					// Unwatch the schema: the table watches stay.
					h.unwatchSchema("billing")
					h.burst("billing.other", 9, 10)
					h.burst("billing.t", 9, 10)
					h.burst("public.u", 9, 10)
					p.expect("schema unwatched", burstEvents("billing.t", "t3", v.opts, 9, 10), burstEvents("public.u", "u2", v.opts, 9, 10))
				} else {
					// Unwatch the schema: the table watches stay as they were.
					h.unwatchSchema("billing")
					h.burst("billing.other", 5, 6)
					h.exec(`INSERT INTO billing.later VALUES (5, 'x', 's', 'n')`)
					h.burst("billing.t", 5, 6)
					p.expect("schema unwatched", burstEvents("billing.t", "t2", v.opts, 5, 6))
					// Unwatch the table, then watch the schema again.
					h.unwatch("billing.t")
					h.burst("billing.t", 7, 8)
					h.watchSchema("billing", "schema3")
					h.noSchemaMembers()
					h.burst("billing.t", 9, 10)
					h.burst("billing.other", 9, 10)
					p.expect("schema watched again", burstEvents("billing.t", "schema3", plain, 9, 10),
						burstEvents("billing.other", "schema3", plain, 9, 10))
					// Watch the table again: precedence over the schema.
					h.mustWatch("billing.t", "t3", v.opts)
					h.burst("billing.t", 11, 12)
					p.expect("table watched again", burstEvents("billing.t", "t3", v.opts, 11, 12))
					h.unwatchSchema("billing")
				}
				// Unwatch the rest: nothing more is audited.
				h.unwatch("billing.t")
				h.unwatch("public.u")
				h.burst("billing.t", 21, 22)
				h.burst("public.u", 21, 22)
				h.burst("billing.other", 21, 22)
				h.exec(`INSERT INTO public.u VALUES (99, 'end', 's', 'n')`)
				h.watch("public.u", "other", "end")
				h.exec(`INSERT INTO public.u VALUES (100, 'end', 's', 'n')`)
				p.expect("all unwatched", one("public.u end INSERT 100 new="+allColumns+" old=-"))
				p.done()
				if members := h.members(); members != "u" {
					t.Errorf("publication members after unwatching: got %q, want only the watched table u", members)
				}
			})
		}
	}
}

// schemaWatchBesideRefused is TestSchemaWatchWithEveryTableWatch on
// PostgreSQL 14 for a kind of per-table watch that needs 15 (v): the
// per-table watches are refused, before and after the schema watch, naming
// PostgreSQL 15 and changing nothing; the schema watch covers every table of
// the schema (the refused one too, with every row and column), re-watch and
// unwatch of the schema work, and a table outside it stays unaudited.
func schemaWatchBesideRefused(h *harness, v tableVariant, tableFirst bool) {
	t := h.t
	t.Helper()
	plain := watches.Options{}
	if tableFirst {
		h.refusedBefore15("public.u", "u", v.opts)
		h.refusedBefore15("billing.t", "t", v.opts)
		var pubs, slots int
		if err := h.conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM pg_publication),
			(SELECT count(*) FROM pg_replication_slots WHERE database = current_database())`).Scan(&pubs, &slots); err != nil {
			t.Fatal(err)
		}
		if pubs != 0 || slots != 0 {
			t.Fatalf("the refused watches created %d publication(s) and %d slot(s), want none", pubs, slots)
		}
		h.watchSchema("billing", "schema")
	} else {
		h.watchSchema("billing", "schema")
		h.refusedBefore15("public.u", "u", v.opts)
		h.refusedBefore15("billing.t", "t", v.opts)
	}
	if got := h.members(); got != "billing.other billing.t" {
		t.Fatalf("publication members: got %q, want the schema's tables only", got)
	}
	h.startAgent()
	p := &phases{h: h}
	h.burst("public.u", 1, 2)
	h.burst("billing.t", 1, 2)
	h.burst("billing.other", 1, 2)
	h.exec(`BEGIN; CREATE TABLE billing.later (id int PRIMARY KEY, status text, secret text, note text);
		INSERT INTO billing.later VALUES (1, 'new', 's', 'n'); COMMIT`)
	p.expect("schema watched, "+v.name+" table watches refused", burstEvents("billing.t", "schema", plain, 1, 2),
		burstEvents("billing.other", "schema", plain, 1, 2), one("billing.later schema INSERT 1 new="+allColumns+" old=-"))

	// Re-watch the schema with a new source; the table watch is refused
	// again, and changes nothing.
	h.watchSchema("billing", "schema2")
	h.refusedBefore15("billing.t", "t2", v.opts)
	h.burst("billing.t", 3, 4)
	h.burst("billing.other", 3, 4)
	p.expect("schema re-watched", burstEvents("billing.t", "schema2", plain, 3, 4), burstEvents("billing.other", "schema2", plain, 3, 4))

	// Unwatch the schema: nothing is audited any more.
	h.unwatchSchema("billing")
	h.burst("billing.t", 5, 6)
	h.burst("billing.other", 5, 6)
	h.exec(`INSERT INTO billing.later VALUES (5, 'x', 's', 'n')`)
	h.burst("public.u", 5, 6)
	h.watch("public.u", "other", "end")
	h.exec(`INSERT INTO public.u VALUES (100, 'end', 's', 'n')`)
	p.expect("schema unwatched", one("public.u end INSERT 100 new="+allColumns+" old=-"))
	p.done()
	if members := h.members(); members != "u" {
		t.Errorf("publication members after unwatching: got %q, want only the watched table u", members)
	}
}

// TestSchemaWatchNewTables: tables that join a watched schema later (CREATE
// TABLE, CREATE TABLE AS, SET SCHEMA, SET LOGGED) join the publication in
// their DDL's transaction through the event trigger; a table that leaves the
// schema is no longer audited.
func TestSchemaWatchNewTables(t *testing.T) {
	h := newHarness(t)
	schemaWatchVersion(t, h)
	h.exec(`CREATE SCHEMA billing`)
	h.exec(`CREATE TABLE billing.a (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE public.moved_in (id int PRIMARY KEY)`)
	h.exec(`CREATE UNLOGGED TABLE billing.unlogged (id int PRIMARY KEY)`)
	h.watchSchema("billing", "schema")
	h.startAgent()
	p := &phases{h: h}
	h.exec(`BEGIN; CREATE TABLE billing.n (id int); INSERT INTO billing.n VALUES (1); UPDATE billing.n SET id = 2; COMMIT`)
	h.exec(`CREATE TABLE billing.ctas AS SELECT 1 AS id`) // this row is not captured (documented)
	h.exec(`INSERT INTO billing.ctas VALUES (2)`)
	h.exec(`ALTER TABLE public.moved_in SET SCHEMA billing`)
	h.exec(`INSERT INTO billing.moved_in VALUES (3)`)
	h.exec(`INSERT INTO billing.unlogged VALUES (4)`) // unlogged: not in the WAL
	h.exec(`ALTER TABLE billing.unlogged SET LOGGED`)
	h.exec(`INSERT INTO billing.unlogged VALUES (5)`)
	h.exec(`ALTER TABLE billing.a SET SCHEMA public`)
	h.exec(`INSERT INTO public.a VALUES (6)`) // left the watched schema
	h.exec(`INSERT INTO billing.moved_in VALUES (7)`)
	p.expect("new tables",
		one("billing.n schema INSERT 1 new=id old=-"), one("billing.n schema UPDATE 2 new=id old=id"),
		one("billing.ctas schema INSERT 2 new=id old=-"), one("billing.moved_in schema INSERT 3 new=id old=-"),
		one("billing.unlogged schema INSERT 5 new=id old=-"), one("billing.moved_in schema INSERT 7 new=id old=-"))
	p.done()
	h.noSchemaMembers()
}

// TestSchemaWatchLegacyMembership: a publication holding a schema FOR TABLES
// IN SCHEMA (as earlier versions made it) keeps working; a column-controlled
// watch that it cannot carry fails before changing anything, naming the
// reason and the fix; a role that may converts it to per-table membership in
// one transaction, missing no change made meanwhile. PostgreSQL 14 has no
// FOR TABLES IN SCHEMA, so no publication there can hold such a member: the
// test checks that the server refuses the form, then skips (version gating).
func TestSchemaWatchLegacyMembership(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if v := schemaWatchVersion(t, h); v < 150000 {
		h.exec(`CREATE PUBLICATION legacy_probe`)
		_, err := h.conn.Exec(ctx, `ALTER PUBLICATION legacy_probe ADD TABLES IN SCHEMA public`)
		if err == nil {
			t.Fatalf("PostgreSQL %d accepted ADD TABLES IN SCHEMA", v/10000)
		}
		t.Skipf("PostgreSQL %d has no FOR TABLES IN SCHEMA (%v): no publication there holds a legacy schema member to convert", v/10000, err)
	}
	suffix := roleSuffix(t, h)
	appOwner, billOwner, agentRole := "appowner_"+suffix, "billowner_"+suffix, "lp_"+suffix
	h.ownerRole(appOwner)
	h.ownerRole(billOwner)
	h.exec(`CREATE SCHEMA billing`)
	h.exec(`CREATE TABLE billing.a (id int PRIMARY KEY)`)
	h.exec(`ALTER TABLE billing.a OWNER TO ` + billOwner)
	h.exec(`CREATE TABLE users (id int PRIMARY KEY, name text, ssn text)`)
	h.exec(`ALTER TABLE users OWNER TO ` + appOwner)
	db := dbOf(t, h)
	lp := h.roleConn(agentRole, `ALTER ROLE `+agentRole+` REPLICATION`, `GRANT CREATE ON DATABASE `+db+` TO `+agentRole,
		`GRANT `+appOwner+` TO `+agentRole)
	t.Cleanup(h.stopAgent) // before the role's cleanup drops what it owns
	lpReg := watches.NewRegistry(lp, testPub, testSlot)
	// The least-privilege role sets up the registry, publication and slot.
	if _, err := lpReg.Watch(ctx, mustName(t, "users"), "other", "users"); err != nil {
		t.Fatalf("watch as %s: %v", agentRole, err)
	}
	// What an earlier version's `watch --schema billing` left.
	h.exec(`ALTER PUBLICATION ` + testPub + ` ADD TABLES IN SCHEMA billing`)
	h.exec(`INSERT INTO pgaudit_cdc.schema_watches (schema_name, kind, source) VALUES ('billing', 'other', 'legacy')`)
	h.exec(`INSERT INTO billing.a VALUES (1)`)

	// The role cannot convert (it does not own billing.a): the column list
	// is refused before anything changes.
	_, err := lpReg.Watch(ctx, mustName(t, "users"), "other", "users", watches.Options{ExcludeColumns: []string{"ssn"}})
	if err == nil || !strings.Contains(err.Error(), "FOR TABLES IN SCHEMA") || !strings.Contains(err.Error(), "per-table membership") ||
		strings.Contains(err.Error(), "must own the table") {
		t.Fatalf("column-controlled watch beside a TABLES IN SCHEMA member: got %v, want the PostgreSQL rule and the conversion as the fix", err)
	}
	var ident string
	var cols []string
	if err := h.conn.QueryRow(ctx, `SELECT c.relreplident::text, w.exclude_columns FROM pg_class c
		JOIN pgaudit_cdc.watches w ON w.table_oid = c.oid WHERE c.oid = 'users'::regclass`).Scan(&ident, &cols); err != nil {
		t.Fatal(err)
	}
	if ident != "f" || cols != nil {
		t.Fatalf("the refused watch changed users: replica identity %q, exclude_columns %v", ident, cols)
	}

	// A superuser's watch converts, in one transaction, while a writer keeps
	// inserting; the conversion misses none of its rows.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var written atomic.Int64
	var workErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, h.dsn)
		if err != nil {
			workErr = err
			return
		}
		defer conn.Close(ctx)
		for id := 100; !stop.Load(); id++ {
			if _, err := conn.Exec(ctx, `INSERT INTO billing.a VALUES ($1)`, id); err != nil {
				workErr = err
				return
			}
			written.Add(1)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	h.mustWatch("users", "users", watches.Options{ExcludeColumns: []string{"ssn"}})
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if workErr != nil {
		t.Fatal(workErr)
	}
	h.noSchemaMembers()
	h.startAgent()
	h.exec(`INSERT INTO users VALUES (1, 'ann', '123-45-6789')`)
	n := 1 + int(written.Load()) + 1
	deadline := time.Now().Add(30 * time.Second)
	for len(h.dataEvents()) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	evs := h.dataEvents()
	var got []int
	for _, e := range evs {
		if field(t, e, "table") != "billing.a" {
			continue
		}
		if e.Source != "legacy" {
			t.Fatalf("got %s, want billing.a under the schema watch", render(t, e))
		}
		id, _ := strconv.Atoi(fmt.Sprint(field(t, e, "new", "id")))
		got = append(got, id)
	}
	want := []int{1}
	for id := 100; id < 100+int(written.Load()); id++ {
		want = append(want, id)
	}
	if !slices.Equal(got, want) {
		var missing []int
		for _, id := range want {
			if !slices.Contains(got, id) {
				missing = append(missing, id)
			}
		}
		t.Fatalf("billing.a across the conversion: got %d rows, want 1 then 100..%d in order; missing %v", len(got), 99+written.Load(), missing[:min(len(missing), 20)])
	}
	evs = h.expectExactly(n, 500*time.Millisecond)
	if r := render(t, evs[n-1]); r != "public.users users INSERT 1 new=id,name old=-" {
		t.Errorf("users: got %s, want ssn left out", r)
	}
	t.Logf("%d rows written while the publication was converted, all delivered", written.Load())
}

// TestSchemaWatchWithoutSuperuser: with per-table membership, a schema-wide
// watch needs only what a per-table watch needs (owning the tables), not
// superuser. Without the event trigger (which only a superuser can install)
// a new table joins at the agent's housekeeping. PostgreSQL errors are blamed
// on privileges only when PostgreSQL says so. On PostgreSQL 14, which has no
// column lists, the users table is watched without --exclude-columns after
// the refusal naming PostgreSQL 15.
func TestSchemaWatchWithoutSuperuser(t *testing.T) {
	h := newHarness(t)
	version := schemaWatchVersion(t, h)
	ctx := context.Background()
	suffix := roleSuffix(t, h)
	appOwner, agentRole := "appowner_"+suffix, "lp_"+suffix
	h.ownerRole(appOwner)
	h.exec(`CREATE SCHEMA billing AUTHORIZATION ` + appOwner)
	h.exec(`CREATE SCHEMA payroll`)
	h.exec(`GRANT USAGE ON SCHEMA payroll TO ` + appOwner)
	h.exec(`CREATE TABLE billing.a (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE users (id int PRIMARY KEY, name text, ssn text)`)
	h.exec(`CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE payroll.mine (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE payroll.theirs (id int PRIMARY KEY)`) // owned by the superuser
	for _, tbl := range []string{"billing.a", "users", "scratch", "payroll.mine"} {
		h.exec(`ALTER TABLE ` + tbl + ` OWNER TO ` + appOwner)
	}
	db := dbOf(t, h)
	lp := h.roleConn(agentRole, `ALTER ROLE `+agentRole+` REPLICATION`, `GRANT CREATE ON DATABASE `+db+` TO `+agentRole,
		`GRANT `+appOwner+` TO `+agentRole)
	t.Cleanup(h.stopAgent) // before the role's cleanup drops what it owns
	reg := watches.NewRegistry(lp, testPub, testSlot)
	if err := reg.WatchSchema(ctx, "billing", "other", "billing"); err != nil {
		t.Fatalf("watch --schema as %s: %v", agentRole, err)
	}
	usersOpts, usersColumns := watches.Options{ExcludeColumns: []string{"ssn"}}, "id,name"
	if version < 150000 {
		_, err := reg.Watch(ctx, mustName(t, "users"), "other", "users", usersOpts)
		if err == nil || !strings.Contains(err.Error(), "PostgreSQL 15") || strings.Contains(err.Error(), "must own the table") {
			t.Fatalf("PostgreSQL 14: watch --exclude-columns beside a schema watch, as %s: got %v, want a refusal naming PostgreSQL 15", agentRole, err)
		}
		usersOpts, usersColumns = watches.Options{}, "id,name,ssn"
	}
	if _, err := reg.Watch(ctx, mustName(t, "users"), "other", "users", usersOpts); err != nil {
		t.Fatalf("watch %+v beside a schema watch, as %s: %v", usersOpts, agentRole, err)
	}

	// Refusals: the reason PostgreSQL gave, privileges only for 42501.
	_, err := reg.Watch(ctx, mustName(t, "scratch"), "other", "s")
	if err == nil || !strings.Contains(err.Error(), "unlogged") || strings.Contains(err.Error(), "must own the table") {
		t.Errorf("watch of an unlogged table: got %v, want the reason, not privileges", err)
	}
	_, err = reg.Watch(ctx, mustName(t, "users"), "other", "users", watches.Options{RowFilter: "no_such_column > 1"})
	reason := "no_such_column"
	if version < 150000 {
		reason = "PostgreSQL 15" // no row filters at all
	}
	if err == nil || !strings.Contains(err.Error(), reason) || strings.Contains(err.Error(), "must own the table") {
		t.Errorf("watch with a bad --where: got %v, want the reason (%s), not privileges", err, reason)
	}
	err = reg.WatchSchema(ctx, "payroll", "other", "payroll")
	if err == nil || !strings.Contains(err.Error(), "must own the table") || !isDenied(err) {
		t.Errorf("watch --schema with a table the role does not own: got %v, want SQLSTATE 42501 and the ownership fix", err)
	}
	var payrollWatched, payrollMembers int
	if err := h.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgaudit_cdc.schema_watches WHERE schema_name = 'payroll'),
		(SELECT count(*) FROM pg_publication_rel WHERE prrelid IN ('payroll.mine'::regclass, 'payroll.theirs'::regclass))`).Scan(&payrollWatched, &payrollMembers); err != nil {
		t.Fatal(err)
	}
	if payrollWatched != 0 || payrollMembers != 0 {
		t.Errorf("the refused schema watch changed something: %d registry rows, %d publication members", payrollWatched, payrollMembers)
	}

	var triggers int
	if err := h.conn.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger WHERE evtname = $1`, watches.EventTriggerName).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if triggers != 0 {
		t.Fatalf("the event trigger exists; this test is about a database without it")
	}
	h.startAgent()
	h.exec(`INSERT INTO billing.a VALUES (1)`)
	h.exec(`INSERT INTO users VALUES (1, 'ann', '123-45-6789')`)
	// A new table: the housekeeping (the agent's, or this call, as the role)
	// adds it to the publication.
	h.exec(`CREATE TABLE billing.later (v int)`)
	h.exec(`ALTER TABLE billing.later OWNER TO ` + appOwner)
	if _, err := reg.FixReplicaIdentity(ctx); err != nil {
		t.Fatalf("housekeeping as %s: %v", agentRole, err)
	}
	h.exec(`INSERT INTO billing.later VALUES (2)`)
	h.exec(`UPDATE billing.later SET v = 3`) // needs REPLICA IDENTITY FULL (no key)
	evs := h.expectExactly(4, 500*time.Millisecond)
	var got []string
	for _, e := range evs {
		got = append(got, render(t, e))
	}
	want := []string{"billing.a billing INSERT 1 new=id old=-", "public.users users INSERT 1 new=" + usersColumns + " old=-",
		"billing.later billing INSERT <nil> new=v old=-", "billing.later billing UPDATE <nil> new=v old=v"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if ok, err := reg.UnwatchSchema(ctx, "billing"); err != nil || !ok {
		t.Fatalf("unwatch --schema as %s: %v %v", agentRole, ok, err)
	}
	if ok, err := reg.Unwatch(ctx, mustName(t, "users")); err != nil || !ok {
		t.Fatalf("unwatch as %s: %v %v", agentRole, ok, err)
	}
}

// dbOf returns the name of the test's database.
func dbOf(t *testing.T, h *harness) string {
	t.Helper()
	u, err := url.Parse(h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// roleSuffix makes role names (which are cluster-wide) unique to the test's
// database: its random suffix.
func roleSuffix(t *testing.T, h *harness) string {
	t.Helper()
	db := dbOf(t, h)
	return db[len(db)-6:]
}

// TestSchemaWatchPartitionOptionsRefused: with publish_via_partition_root,
// a partition's changes are published as its partitioned table's, with that
// table's row filter and column list. A schema watch or a watch that would
// make PostgreSQL ignore a partition's own --where/--columns is refused, in
// either order, before anything changes. On PostgreSQL 14, which has no row
// filters or column lists, such watches of the partitions are refused naming
// PostgreSQL 15, and the schema watch publishes the partitions' changes as
// the partitioned table's all the same.
func TestSchemaWatchPartitionOptionsRefused(t *testing.T) {
	h := newHarness(t)
	version := schemaWatchVersion(t, h)
	ctx := context.Background()
	h.exec(`CREATE SCHEMA billing`)
	h.exec(`CREATE TABLE billing.r (id int PRIMARY KEY, secret text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE billing.r1 PARTITION OF billing.r FOR VALUES FROM (0) TO (100)`)
	h.exec(`CREATE TABLE billing.r2 PARTITION OF billing.r FOR VALUES FROM (100) TO (200)`)
	members := func() string {
		t.Helper()
		var s string
		if err := h.conn.QueryRow(ctx, `SELECT coalesce(string_agg(prrelid::regclass::text, ' ' ORDER BY prrelid::regclass::text), '')
			FROM pg_publication_rel WHERE prrelid::regclass::text LIKE 'billing.%'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	exclude := watches.Options{ExcludeColumns: []string{"secret"}}

	if version < 150000 {
		h.refusedBefore15("billing.r1", "r1", exclude)
		if got := members(); got != "" {
			t.Fatalf("the refusal changed the publication: members %q, want none", got)
		}
		h.watchSchema("billing", "schema")
		h.refusedBefore15("billing.r2", "r2", exclude)
		h.refusedBefore15("billing.r2", "r2", watches.Options{RowFilter: "id > 150"})
	} else {
		partitionOptionsRefused(t, h, members, exclude)
	}
	if got := members(); got != "billing.r billing.r1 billing.r2" {
		t.Fatalf("members %q, want the schema's three tables", got)
	}
	// The schema watch publishes the partitions' changes as billing.r's.
	h.startAgent()
	h.exec(`INSERT INTO billing.r VALUES (1, 's'), (150, 's')`)
	evs := h.expectExactly(2, 300*time.Millisecond)
	for _, e := range evs {
		if r := render(t, e); !strings.HasPrefix(r, "billing.r schema INSERT") || !strings.Contains(r, "new=id,secret") {
			t.Errorf("got %s, want the change under billing.r with every column", r)
		}
	}
}

// partitionOptionsRefused is TestSchemaWatchPartitionOptionsRefused's part
// for PostgreSQL 15+: the refusals in either order. It ends with billing
// watched.
func partitionOptionsRefused(t *testing.T, h *harness, members func() string, exclude watches.Options) {
	t.Helper()
	ctx := context.Background()
	// Partition first: the schema watch and a watch of the partitioned
	// table are refused.
	h.mustWatch("billing.r1", "r1", exclude)
	err := newRegistry(h).WatchSchema(ctx, "billing", "other", "schema")
	if err == nil || !strings.Contains(err.Error(), "billing.r1") || !strings.Contains(err.Error(), "unwatch billing.r1") {
		t.Fatalf("watch --schema over a column-controlled partition: got %v, want a refusal naming the partition and the fix", err)
	}
	if err := h.watchWith("billing.r", "other", "r", watches.Options{}); err == nil || !strings.Contains(err.Error(), "billing.r1") {
		t.Fatalf("watch of the partitioned table over a column-controlled partition: got %v, want a refusal", err)
	}
	if got := members(); got != "billing.r1" {
		t.Fatalf("the refusals changed the publication: members %q, want billing.r1 only", got)
	}
	if entries, _ := watches.LoadSchemas(ctx, h.conn, true); len(entries) != 0 {
		t.Fatalf("the refused schema watch was registered: %+v", entries)
	}

	// Schema first: the column-controlled watch of a partition is refused.
	h.unwatch("billing.r1")
	h.watchSchema("billing", "schema")
	err = h.watchWith("billing.r2", "other", "r2", exclude)
	if err == nil || !strings.Contains(err.Error(), "partition of billing.r") {
		t.Fatalf("column-controlled watch of a partition of a published partitioned table: got %v, want a refusal", err)
	}
}
