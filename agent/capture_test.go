package agent_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

func (h *harness) watchWith(table, kind, source string, o watches.Options) error {
	h.t.Helper()
	_, err := newRegistry(h).Watch(context.Background(), mustName(h.t, table), kind, source, o)
	return err
}

func meta(t *testing.T, e spinetest.Event) map[string]any {
	t.Helper()
	m, _ := e.Payload["metadata"].(map[string]any)
	return m
}

func TestAnnotations(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE a (id int PRIMARY KEY, v text)`)
	h.watch("a", "other", "ann")
	h.startAgent()
	ctx := context.Background()
	txn := func(stmts ...string) {
		t.Helper()
		tx, err := h.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	txn(`INSERT INTO a VALUES (1, 'before')`,
		`SELECT pgaudit_cdc.annotate('{"user": "alice", "request_id": "r-1"}')`,
		`INSERT INTO a VALUES (2, 'x')`,
		`SELECT pg_logical_emit_message(true, 'pgaudit_cdc.annotations', '{"user": "bob"}')`, // replaces
		`INSERT INTO a VALUES (3, 'x')`)
	txn(`INSERT INTO a VALUES (4, 'next transaction: no annotations')`)
	txn(`SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '{"sequin": true}')`,
		`INSERT INTO a VALUES (5, 'x')`,
		`SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.clear', '')`,
		`INSERT INTO a VALUES (6, 'x')`)
	txn(`SELECT pg_logical_emit_message(true, '_bemi', '{"origin": "bemi-orm", "user_id": 7}')`, `INSERT INTO a VALUES (7, 'x')`)
	txn(`SELECT pg_logical_emit_message(true, 'pgaudit_cdc.annotations', '{not json')`, `INSERT INTO a VALUES (8, 'x')`)
	txn(`SELECT pg_logical_emit_message(false, 'pgaudit_cdc.annotations', '{"nontransactional": true}')`, `INSERT INTO a VALUES (9, 'x')`)
	evs := h.expectExactly(9, 300*time.Millisecond)
	want := []string{"", `{"request_id":"r-1","user":"alice"}`, `{"user":"bob"}`, "", `{"sequin":true}`, "", `{"origin":"bemi-orm","user_id":7}`, "", ""}
	for i, e := range evs {
		got := ""
		if a, ok := meta(t, e)["annotations"]; ok {
			got = jsonOf(t, a)
		}
		if got != want[i] {
			t.Errorf("event %d (id %v): got annotations %s, want %s", i, field(t, e, "new", "id"), got, want[i])
		}
	}
	if msg, _ := meta(t, evs[7])["annotations_error"].(string); !strings.Contains(msg, "malformed") {
		t.Errorf("malformed annotations: got annotations_error %q, want it reported on the event", msg)
	}
}

func TestRowFilterAndColumnControl(t *testing.T) {
	h := newHarness(t)
	rowFilterVersion(t, h)
	h.exec(`CREATE TABLE f (id int PRIMARY KEY, status text, amount int)`)
	h.exec(`CREATE TABLE users (id int PRIMARY KEY, name text, ssn text, password_hash text)`)
	h.exec(`CREATE TABLE c (id int PRIMARY KEY, a text, b text, secret text)`)
	if err := h.watchWith("f", "other", "filter", watches.Options{RowFilter: "status <> 'draft'"}); err != nil {
		t.Fatal(err)
	}
	if err := h.watchWith("users", "other", "users", watches.Options{ExcludeColumns: []string{"ssn", "password_hash"}}); err != nil {
		t.Fatal(err)
	}
	if err := h.watchWith("c", "other", "cols", watches.Options{Columns: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	h.exec(`CREATE TABLE payroll (id int PRIMARY KEY, salary numeric)`)
	for _, bad := range []struct {
		o    watches.Options
		want string
	}{
		{watches.Options{RowFilter: "no_such_column > 1"}, "no_such_column"},
		{watches.Options{RowFilter: "true); DROP TABLE f; --"}, ""},
		// Closing the parenthesis to name a second table: refused, and
		// the other table is not published.
		{watches.Options{RowFilter: "true), public.payroll WHERE (true"}, "not a single expression"},
		{watches.Options{RowFilter: "true), TABLES IN SCHEMA public --"}, "not a single expression"},
		{watches.Options{ExcludeColumns: []string{"nope"}}, `column "nope" does not exist`},
		{watches.Options{ExcludeColumns: []string{"id"}}, "primary key"},
		{watches.Options{Columns: []string{"a"}, OnColumns: []string{"a"}}, "--on-columns"},
	} {
		err := h.watchWith("c", "other", "x", bad.o)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("watch with %+v: got %v, want an error containing %q", bad.o, err, bad.want)
		}
	}
	var n int
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_class WHERE relname = 'f'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the injected DROP ran: table f count %d (%v)", n, err)
	}
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_tables WHERE tablename = 'payroll'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a --where expression published payroll (%d, %v)", n, err)
	}
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_namespace`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a --where expression published a schema (%d, %v)", n, err)
	}
	h.startAgent()
	h.exec(`INSERT INTO f VALUES (1, 'draft', 10), (2, 'final', 20)`)
	h.exec(`INSERT INTO users VALUES (1, 'ann', '123-45-6789', 'hash')`)
	h.exec(`UPDATE users SET name = 'anne', ssn = '999' WHERE id = 1`)
	h.exec(`INSERT INTO c VALUES (1, 'A', 'B', 'S')`)
	evs := h.expectExactly(4, 300*time.Millisecond)
	if got := jsonOf(t, field(t, evs[0], "new")); got != `{"amount":20,"id":2,"status":"final"}` {
		t.Errorf("row filter: got %s, want only the final row", got)
	}
	// Only the rows are searched: the metadata holds timestamps and
	// positions, whose digits may spell "999" by chance.
	for _, e := range evs[1:3] {
		for _, side := range []string{"old", "new"} {
			row, ok := e.Payload[side]
			if !ok {
				continue
			}
			body := jsonOf(t, row)
			if strings.Contains(body, "123-45") || strings.Contains(body, "hash") || strings.Contains(body, "999") || strings.Contains(body, "ssn") {
				t.Errorf("excluded column leaked into %s: %s", side, body)
			}
		}
	}
	if got := jsonOf(t, field(t, evs[2], "new")); got != `{"id":1,"name":"anne"}` {
		t.Errorf("exclude-columns update: got new %s", got)
	}
	if got := jsonOf(t, field(t, evs[3], "new")); got != `{"a":"A","id":1}` {
		t.Errorf("columns: got %s, want a and the key only", got)
	}
}

func TestOnColumns(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE o (id int PRIMARY KEY, status text, amount int, note text)`)
	if err := h.watchWith("o", "other", "on", watches.Options{OnColumns: []string{"status", "amount"}}); err != nil {
		t.Fatal(err)
	}
	h.startAgent()
	h.exec(`INSERT INTO o VALUES (1, 'new', 1, 'n')`)
	h.exec(`UPDATE o SET note = 'only the note'`)
	h.exec(`UPDATE o SET status = 'approved'`)
	h.exec(`UPDATE o SET amount = 2, note = 'x'`)
	h.exec(`DELETE FROM o`)
	evs := h.expectExactly(4, 300*time.Millisecond)
	var ops []string
	for _, e := range evs {
		ops = append(ops, fmt.Sprint(field(t, e, "operation")))
	}
	if got := strings.Join(ops, ","); got != "INSERT,UPDATE,UPDATE,DELETE" {
		t.Fatalf("got operations %s, want the note-only UPDATE left out", got)
	}
	// A rename of an on-column must not switch the filter off: the
	// column is no longer there to compare, so every UPDATE counts.
	h.exec(`INSERT INTO o VALUES (2, 'new', 1, 'n')`)
	h.exec(`ALTER TABLE o RENAME COLUMN amount TO amount_x`)
	h.exec(`UPDATE o SET amount_x = 1000000`)
	evs = h.expectExactly(6, 300*time.Millisecond)
	if got := fmt.Sprint(field(t, evs[5], "operation"), " ", field(t, evs[5], "new", "amount_x")); got != "UPDATE 1000000" {
		t.Fatalf("after renaming an on-column, got %s, want the UPDATE of it", got)
	}
}

func TestSchemaWideWatch(t *testing.T) {
	h := newHarness(t)
	schemaWatchVersion(t, h)
	h.exec(`CREATE SCHEMA billing`)
	h.exec(`CREATE TABLE billing.invoices (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE billing.special (id int PRIMARY KEY)`)
	if err := newRegistry(h).WatchSchema(context.Background(), "billing", "other", "billing-schema"); err != nil {
		t.Fatal(err)
	}
	h.watch("billing.special", "watch_drifted", "special") // a per-table watch overrides
	h.startAgent()
	h.exec(`INSERT INTO billing.invoices VALUES (1)`)
	h.exec(`INSERT INTO billing.special VALUES (1)`)
	h.exec(`CREATE TABLE billing.later (id int)`) // created after the watch, no key
	h.exec(`INSERT INTO billing.later VALUES (1)`)
	evs := h.expectExactly(3, 300*time.Millisecond)
	got := []string{}
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s/%s/%s", field(t, e, "table"), e.Kind, e.Source))
	}
	want := "billing.invoices/other/billing-schema billing.special/watch_drifted/special billing.later/other/billing-schema"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	ok, err := newRegistry(h).UnwatchSchema(context.Background(), "billing")
	if err != nil || !ok {
		t.Fatalf("UnwatchSchema: %v %v", ok, err)
	}
	h.exec(`INSERT INTO billing.invoices VALUES (2)`) // no longer audited
	h.exec(`INSERT INTO billing.special VALUES (2)`)  // still watched by itself
	evs = h.expectExactly(4, 500*time.Millisecond)
	if got := field(t, evs[3], "table"); got != "billing.special" {
		t.Fatalf("got %v after unwatching the schema, want billing.special only", got)
	}
	entries, _ := watches.LoadSchemas(context.Background(), h.conn, true)
	if len(entries) != 1 || entries[0].Active {
		t.Fatalf("schema registry: got %+v, want one inactive entry", entries)
	}
}

func TestSkipMarker(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE s (id int PRIMARY KEY, v int)`)
	h.exec(`CREATE TABLE s2 (id int PRIMARY KEY)`)
	h.watch("s", "other", "skip")
	h.watch("s2", "other", "skip")
	h.startAgent()
	ctx := context.Background()
	tx, err := h.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{`INSERT INTO s VALUES (0, 0)`, `SELECT pgaudit_cdc.skip('mass backfill of v')`,
		`INSERT INTO s SELECT g, g FROM generate_series(1, 500) g`, `UPDATE s SET v = v + 1 WHERE id <= 100`,
		`DELETE FROM s WHERE id > 450`, `INSERT INTO s2 SELECT generate_series(1, 3)`} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	h.exec(`INSERT INTO s VALUES (1000, 1)`) // the marker does not outlive its transaction
	evs := h.expectExactly(4, 300*time.Millisecond)
	if op := field(t, evs[0], "operation"); op != "INSERT" {
		t.Errorf("first event: got %v, want the INSERT before the marker", op)
	}
	if got := jsonOf(t, field(t, evs[1], "counts")); field(t, evs[1], "operation") != "SUMMARY" || got != `{"DELETE":50,"INSERT":500,"UPDATE":101}` {
		t.Errorf("summary of s: got %v %s", field(t, evs[1], "operation"), got)
	}
	if reason := field(t, evs[1], "skip", "reason"); reason != "mass backfill of v" {
		t.Errorf("summary: got skip %v, want the reason and who", field(t, evs[1], "skip"))
	}
	if field(t, evs[1], "skip", "by") == nil {
		t.Errorf("summary lacks who: %v", field(t, evs[1], "skip"))
	}
	if got := jsonOf(t, field(t, evs[2], "counts")); field(t, evs[2], "table") != "public.s2" || got != `{"INSERT":3}` {
		t.Errorf("summary of s2: got %v %s", field(t, evs[2], "table"), got)
	}
	if op := field(t, evs[3], "operation"); op != "INSERT" {
		t.Errorf("after the skipped transaction: got %v, want INSERT", op)
	}
}

func TestSelfAudit(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE d (id int PRIMARY KEY)`)
	h.watch("d", "other", "app")
	h.startAgent()
	h.exec(`INSERT INTO d VALUES (1)`)
	h.unwatch("d")
	h.exec(`DELETE FROM d`) // the quiet deletion an auditor must be able to see around
	h.watch("d", "watch_drifted", "app")
	h.exec(`INSERT INTO d VALUES (2)`)
	h.expectExactly(2, 500*time.Millisecond)
	var seq []string
	for _, e := range withoutTrail(h.spine.Events()) {
		if e.Source == "pgaudit-cdc" {
			seq = append(seq, fmt.Sprintf("%v(%v by %v)", field(t, e, "operation"), field(t, e, "watch", "kind"), field(t, e, "changed_by")))
		} else {
			seq = append(seq, fmt.Sprintf("%v", field(t, e, "operation")))
		}
	}
	want := "WATCH(other by postgres) INSERT UNWATCH(<nil> by postgres) WATCH(watch_drifted by postgres) INSERT"
	if got := strings.Join(seq, " "); got != want {
		t.Fatalf("chain:\ngot  %s\nwant %s", got, want)
	}
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == "UNWATCH" && field(t, e, "previous", "table") != "public.d" {
			t.Errorf("UNWATCH does not say which watch: %s", jsonOf(t, e.Payload))
		}
	}
}

// TestBackfillWithConcurrentWrites backfills a table while a workload
// changes it; folding the spine's events must give exactly the table.
func TestBackfillWithConcurrentWrites(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL, c char(4), at timestamptz)`)
	h.exec(`INSERT INTO b SELECT g, 0, 'ab', '2026-01-01' FROM generate_series(1, 3000) g`)
	h.watch("b", "other", "backfill")
	h.startAgent()

	// The workload stops between statements: a cancelled statement could
	// still commit on the server after the marker row below.
	ctx := context.Background()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var workErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, h.dsn)
		if err != nil {
			workErr = err
			return
		}
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(7, 8))
		for !stop.Load() {
			id := 1 + rng.IntN(3500)
			var err error
			switch rng.IntN(3) {
			case 0:
				_, err = conn.Exec(ctx, `UPDATE b SET v = v + 1 WHERE id = $1`, id)
			case 1:
				_, err = conn.Exec(ctx, `DELETE FROM b WHERE id = $1`, id)
			default:
				_, err = conn.Exec(ctx, `INSERT INTO b VALUES ($1, 100, 'x', now()) ON CONFLICT (id) DO UPDATE SET v = b.v + 10`, id)
			}
			if err != nil {
				workErr = err
				return
			}
		}
	}()
	var chunks int64
	bconn, err := pgx.Connect(context.Background(), h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer bconn.Close(context.Background())
	var oid uint32
	if err := bconn.QueryRow(context.Background(), `SELECT 'b'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	p, err := backfill.Run(context.Background(), bconn, oid, backfill.Options{ChunkSize: 250, OnChunk: func(p backfill.Progress) { chunks = p.Chunks }})
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if err != nil {
		t.Fatalf("backfill: %v", err)
	}
	if workErr != nil {
		t.Fatalf("workload: %v", workErr)
	}
	// The concurrent DELETEs leave fewer rows the longer the backfill runs:
	// many chunks of 250, as many as its rows need (the last one short,
	// empty when they are a multiple of 250), not a fixed count.
	if want := p.Rows/250 + 1; !p.Done || p.Rows < 1000 || chunks != want {
		t.Fatalf("got progress %+v after %d chunks, want done after %d chunks of at most 250 rows (at least 1000 rows)", p, chunks, want)
	}
	// Wait for the stream to drain: a marker row written last.
	h.exec(`INSERT INTO b VALUES (-1, -1, 'end', now())`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		evs := h.dataEvents()
		if len(evs) > 0 && jsonOf(t, field(t, evs[len(evs)-1], "new", "id")) == "-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream did not drain: %d events, last %s", len(evs), jsonOf(t, evs[len(evs)-1].Payload))
		}
		time.Sleep(100 * time.Millisecond)
	}
	state := map[string]string{}
	reads := 0
	for _, e := range h.dataEvents() {
		switch field(t, e, "operation") {
		case "READ":
			reads++
			state[jsonOf(t, field(t, e, "new", "id"))] = jsonOf(t, field(t, e, "new"))
		case "INSERT", "UPDATE":
			state[jsonOf(t, field(t, e, "new", "id"))] = jsonOf(t, field(t, e, "new"))
		case "DELETE":
			delete(state, jsonOf(t, field(t, e, "old", "id")))
		}
	}
	rows, err := h.conn.Query(context.Background(), `SELECT id, v, c, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') FROM b`)
	if err != nil {
		t.Fatal(err)
	}
	table := map[string]string{}
	for rows.Next() {
		var id, v int
		var c, at string
		if err := rows.Scan(&id, &v, &c, &at); err != nil {
			t.Fatal(err)
		}
		table[fmt.Sprint(id)] = fmt.Sprintf("%d|%s", v, c)
	}
	folded := map[string]string{}
	for id, row := range state {
		var r struct {
			V int    `json:"v"`
			C string `json:"c"`
		}
		if err := jsonUnmarshal(row, &r); err != nil {
			t.Fatal(err)
		}
		folded[id] = fmt.Sprintf("%d|%s", r.V, r.C)
	}
	var diffs []string
	for id, want := range table {
		if folded[id] != want {
			diffs = append(diffs, fmt.Sprintf("id %s: spine %q, table %q", id, folded[id], want))
		}
	}
	for id := range folded {
		if _, ok := table[id]; !ok {
			diffs = append(diffs, fmt.Sprintf("id %s: in the spine, not in the table", id))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("%d rows differ between the folded spine and the table, e.g. %v", len(diffs), diffs[:min(5, len(diffs))])
	}
	if reads == 0 {
		t.Fatalf("no READ events")
	}
	t.Logf("backfill: %d READ events in %d chunks; %d rows in the table match the folded spine", reads, chunks, len(table))
}

func TestBackfillRefusesTableWithoutKey(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE nokey (v int)`)
	h.watch("nokey", "other", "s")
	var oid uint32
	if err := h.conn.QueryRow(context.Background(), `SELECT 'nokey'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	_, err := backfill.Run(context.Background(), h.conn, oid, backfill.Options{})
	if err == nil || !strings.Contains(err.Error(), "no primary key") {
		t.Fatalf("got %v, want a clear refusal", err)
	}
}
