package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// ownerRole creates a role that cannot log in, to own tables and schemas,
// and drops it with what it owns when the test ends.
func (h *harness) ownerRole(name string) {
	h.t.Helper()
	h.exec(`CREATE ROLE ` + name + ` NOLOGIN`)
	h.dropRoleAtEnd(name)
}

// dropRoleAtEnd drops role name and everything it owns when the test ends.
func (h *harness) dropRoleAtEnd(name string) {
	h.t.Cleanup(func() {
		ctx := context.Background()
		_, _ = h.conn.Exec(ctx, fmt.Sprintf(`DROP OWNED BY %s CASCADE`, name))
		_, _ = h.conn.Exec(ctx, fmt.Sprintf(`DROP ROLE %s`, name))
	})
}

// roleConn creates a login role for the test's database, runs grants as
// the superuser, and returns a connection as that role.
func (h *harness) roleConn(name string, grants ...string) *pgx.Conn {
	h.t.Helper()
	h.exec(fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'x'`, name))
	h.dropRoleAtEnd(name)
	for _, g := range grants {
		h.exec(g)
	}
	u, err := url.Parse(h.dsn)
	if err != nil {
		h.t.Fatal(err)
	}
	u.User = url.UserPassword(name, "x")
	conn, err := pgx.Connect(context.Background(), u.String())
	if err != nil {
		h.t.Fatalf("connecting as %s: %v", name, err)
	}
	h.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func run(t *testing.T, conn *pgx.Conn, sqls ...string) error {
	t.Helper()
	tx, err := conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	for _, sql := range sqls {
		if _, err := tx.Exec(context.Background(), sql); err != nil {
			return err
		}
	}
	return tx.Commit(context.Background())
}

func isDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege
}

// TestForgedControlMessagesHaveNoEffect plays an application role with DML
// on orders only, trying every way to suppress or invent audit events.
func TestForgedControlMessagesHaveNoEffect(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE orders (id int PRIMARY KEY, total numeric)`)
	h.exec(`CREATE TABLE payroll (id int PRIMARY KEY, salary numeric)`)
	h.exec(`INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 3) g`)
	h.exec(`INSERT INTO payroll VALUES (7, 100)`)
	h.watch("orders", "other", "shop")
	h.watch("payroll", "other", "hr")
	var payrollOID uint32
	if err := h.conn.QueryRow(context.Background(), `SELECT 'payroll'::regclass::oid`).Scan(&payrollOID); err != nil {
		t.Fatal(err)
	}
	app := h.roleConn("app_forger", `GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app_forger`)
	obs := h.observe()
	h.startAgent()

	// 1. skip() is not executable by PUBLIC any more.
	if err := run(t, app, `SELECT pgaudit_cdc.skip('bulk')`, `UPDATE orders SET total = 0 WHERE id = 1`); !isDenied(err) {
		t.Fatalf("pgaudit_cdc.skip as an application role: got %v, want permission denied", err)
	}
	// 2. Nor can the role write the control table itself.
	if err := run(t, app, `INSERT INTO pgaudit_cdc.control (action, reason) VALUES ('skip', 'x')`, `DELETE FROM orders WHERE id = 1`); !isDenied(err) {
		t.Fatalf("INSERT into pgaudit_cdc.control as an application role: got %v, want permission denied", err)
	}
	// 3. A raw skip message claiming to be postgres, then a DELETE.
	forged := `{"reason":"approved by CFO","by":"postgres","application_name":"psql"}`
	if err := run(t, app, fmt.Sprintf(`SELECT pg_logical_emit_message(true, 'pgaudit_cdc.skip', '%s')`, forged),
		`DELETE FROM orders WHERE id = 2`); err != nil {
		t.Fatalf("forged skip: %v", err)
	}
	// 4. A crafted backfill chunk for a table the role cannot even read.
	chunk, _ := json.Marshal(decode.BackfillChunk{ID: 1, TableOID: payrollOID, Schema: "public", Table: "payroll", Chunk: 1,
		Columns: []decode.BackfillColumn{{Name: "id", TypeOID: 23}, {Name: "salary", TypeOID: 1700}},
		Rows:    [][]*string{{ptr("7"), ptr("999999")}}})
	if err := run(t, app, fmt.Sprintf(`SELECT pg_logical_emit_message(true, 'pgaudit_cdc.backfill', '%s')`, strings.ReplaceAll(string(chunk), "'", "''")),
		`UPDATE orders SET total = 1 WHERE id = 3`); err != nil {
		t.Fatalf("forged backfill: %v", err)
	}
	// 5. A crafted checkpoint claiming the table's rows match a digest.
	cp, _ := json.Marshal(decode.CheckpointMessage{ID: 1, TableOID: payrollOID, Schema: "public", Table: "payroll",
		Last: true, Rows: 1, Digest: strings.Repeat("0", 64), KeyColumns: []string{"id"}, Columns: []string{"id", "salary"}})
	if err := run(t, app, fmt.Sprintf(`SELECT pg_logical_emit_message(true, 'pgaudit_cdc.checkpoint', '%s')`, strings.ReplaceAll(string(cp), "'", "''")),
		`UPDATE orders SET total = 2 WHERE id = 3`); err != nil {
		t.Fatalf("forged checkpoint: %v", err)
	}

	evs := h.expectExactly(3, 500*time.Millisecond)
	for i, want := range []string{"DELETE", "UPDATE", "UPDATE"} {
		if op := field(t, evs[i], "operation"); op != want {
			t.Fatalf("event %d is %v, want the row event %s:\n%s", i, op, want, dump(evs))
		}
	}
	if id := field(t, evs[0], "old", "id"); fmt.Sprint(id) != "2" {
		t.Fatalf("the DELETE after a forged skip carries old %v, want the deleted row 2", field(t, evs[0], "old"))
	}
	for _, e := range h.spine.Events() {
		if op, _ := e.Payload["operation"].(string); op == envelope.OpSummary || op == envelope.OpRead || op == envelope.OpCheckpoint {
			t.Fatalf("a forged control message had an effect: %s", dump([]spinetest.Event{e}))
		}
	}
	// Each forged message is counted by prefix and logged at ERROR with its
	// xid and LSN: the attempt is visible, never silent. (Each was read
	// before the row event that followed it, which is delivered.)
	for _, prefix := range []string{decode.SkipPrefix, decode.BackfillPrefix, decode.CheckpointPrefix} {
		obs.expectMetric(t, 1, "pgaudit_cdc_unauthenticated_control_messages_total", "prefix", prefix)
	}
	obs.expectLog(t, 1, "level=ERROR", "ignored a pgaudit_cdc.skip message without an authorising pgaudit_cdc.control row (xid ", "prefix="+decode.SkipPrefix)
	obs.expectLog(t, 1, "level=ERROR", fmt.Sprintf("ignored a backfill chunk for table OID %d without an authorising pgaudit_cdc.control row (xid ", payrollOID), "prefix="+decode.BackfillPrefix)
	obs.expectLog(t, 1, "level=ERROR", fmt.Sprintf("ignored a checkpoint for table OID %d without an authorising pgaudit_cdc.control row (xid ", payrollOID), "prefix="+decode.CheckpointPrefix)
	if n := len(obs.logLines("without an authorising pgaudit_cdc.control row", ", at ")); n != 3 {
		t.Fatalf("%d of the 3 ignored-message lines name the LSN", n)
	}
}

// TestSkipByMaintenanceRole: a role granted as setup --print-sql shows can
// skip, and the summary says who it was from what PostgreSQL recorded.
func TestSkipByMaintenanceRole(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE orders (id int PRIMARY KEY, total numeric)`)
	h.watch("orders", "other", "shop")
	maint := h.roleConn("maint_ops",
		`GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO maint_ops`,
		`GRANT INSERT ON pgaudit_cdc.control TO maint_ops`,
		`GRANT USAGE ON SEQUENCE pgaudit_cdc.control_id_seq TO maint_ops`,
		`GRANT EXECUTE ON FUNCTION pgaudit_cdc.skip(text) TO maint_ops`)
	h.startAgent()
	if err := run(t, maint, `SET application_name = 'nightly'`, `SELECT pgaudit_cdc.skip('reindex')`,
		`INSERT INTO orders SELECT g, g FROM generate_series(1, 50) g`); err != nil {
		t.Fatalf("skip as the maintenance role: %v", err)
	}
	// Trying to claim another name in the control row does not stick.
	if err := run(t, maint, `INSERT INTO pgaudit_cdc.control (action, reason, by_role) VALUES ('skip', 'claim', 'postgres')`,
		`DELETE FROM orders WHERE id = 1`); err != nil {
		t.Fatalf("skip with a claimed name: %v", err)
	}
	evs := h.expectExactly(2, 500*time.Millisecond)
	for _, e := range evs {
		if op := field(t, e, "operation"); op != envelope.OpSummary {
			t.Fatalf("got %v, want SUMMARY events:\n%s", op, dump(evs))
		}
		if by := field(t, e, "skip", "by"); by != "maint_ops" {
			t.Fatalf("skip.by = %v, want maint_ops (what the session was)", by)
		}
	}
	if got := field(t, evs[0], "counts", "INSERT"); fmt.Sprint(got) != "50" {
		t.Fatalf("counts.INSERT = %v, want 50", got)
	}
	if got := field(t, evs[0], "skip", "reason"); got != "reindex" {
		t.Fatalf("skip.reason = %v, want reindex", got)
	}
}

func ptr(s string) *string { return &s }

// TestReplicaIdentityWeakened: a migration sets REPLICA IDENTITY DEFAULT on a
// watched table. The events written meanwhile say their old row is
// incomplete, the agent notices from the RELATION message (it logs and
// counts it, and restores FULL at once rather than at the next 15 s
// housekeeping round), so later events carry the whole old row again.
func TestReplicaIdentityWeakened(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE orders (id int PRIMARY KEY, total numeric, note text)`)
	h.exec(`INSERT INTO orders VALUES (1, 10, 'a'), (2, 20, 'b')`)
	h.watch("orders", "other", "shop")
	obs := h.observe()
	h.startAgent()
	// Streaming, and the housekeeping round the agent does at start is
	// over: the next one is ~15 s away.
	h.exec(`INSERT INTO orders VALUES (3, 30, 'c')`)
	h.waitEvents(1, 30*time.Second)
	time.Sleep(time.Second)
	obs.expectMetric(t, 0, "pgaudit_cdc_replica_identity_weakened_total", "table", "public.orders")

	// weaken runs the migration with an UPDATE in one transaction (so the
	// agent cannot restore FULL in between) and returns when it committed.
	weaken := func(sqls ...string) time.Time {
		t.Helper()
		if err := run(t, h.conn, append([]string{`ALTER TABLE orders REPLICA IDENTITY DEFAULT`}, sqls...)...); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	// restored waits for FULL and says how long it took.
	restored := func(since time.Time) time.Duration {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var ident string
			if err := h.conn.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = 'orders'::regclass`).Scan(&ident); err != nil {
				t.Fatal(err)
			}
			if ident == "f" {
				return time.Since(since)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent did not restore REPLICA IDENTITY FULL within 30s (still %q)", ident)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Well under the housekeeping interval: the RELATION message, not the
	// periodic round, triggered the repair.
	const prompt = 5 * time.Second

	committed := weaken(`UPDATE orders SET total = 11 WHERE id = 1`, `DELETE FROM orders WHERE id = 2`)
	evs := h.waitEvents(3, 30*time.Second)
	for _, e := range evs[1:3] {
		if field(t, e, "metadata", "old_is_key_only") != true {
			t.Fatalf("%v under REPLICA IDENTITY DEFAULT does not flag its incomplete old row: %s", field(t, e, "operation"), jsonOf(t, e.Payload))
		}
	}
	if took := restored(committed); took > prompt {
		t.Fatalf("REPLICA IDENTITY FULL was restored %s after the change: not on the RELATION message (want < %s)", took.Round(time.Millisecond), prompt)
	}
	obs.waitMetric(t, 5*time.Second, 1, "pgaudit_cdc_replica_identity_weakened_total", "table", "public.orders")
	obs.expectLog(t, 1, "level=WARN", "public.orders streams with REPLICA IDENTITY DEFAULT, not FULL", "restoring FULL", "table=public.orders")
	obs.waitLog(t, "level=WARN", "restored REPLICA IDENTITY FULL on watched tables", "tables=public.orders")

	h.exec(`UPDATE orders SET total = 12 WHERE id = 1`)
	evs = h.expectExactly(4, 300*time.Millisecond)
	if got := field(t, evs[3], "old", "note"); got != "a" {
		t.Fatalf("after FULL was restored the old row is %v, want the whole row", field(t, evs[3], "old"))
	}
	if field(t, evs[3], "metadata", "old_is_key_only") != nil {
		t.Fatalf("a full old row is flagged key-only")
	}

	// Weakened again after it was FULL: noticed, counted and repaired again.
	committed = weaken(`UPDATE orders SET total = 13 WHERE id = 1`)
	h.waitEvents(5, 30*time.Second)
	if took := restored(committed); took > prompt {
		t.Fatalf("the second weakening was repaired after %s, want < %s", took.Round(time.Millisecond), prompt)
	}
	obs.waitMetric(t, 5*time.Second, 2, "pgaudit_cdc_replica_identity_weakened_total", "table", "public.orders")
	obs.expectLog(t, 2, "level=WARN", "public.orders streams with REPLICA IDENTITY DEFAULT, not FULL")
}

// TestTableLifecycle: a rename keeps the watch and the registry follows it;
// a drop ends the watch with a DROP event in commit order; a new table of
// the same name is a new table and is not audited until watched.
func TestTableLifecycle(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE ledger (id int PRIMARY KEY, v text)`)
	h.watch("ledger", "other", "books")
	h.startAgent()
	h.exec(`INSERT INTO ledger VALUES (1, 'a')`)
	h.exec(`ALTER TABLE ledger RENAME TO journal`)
	h.exec(`INSERT INTO journal VALUES (2, 'b')`)
	h.waitEvents(2, 30*time.Second)
	entries, err := newRegistry(h).List(context.Background(), true)
	if err != nil || len(entries) != 1 || entries[0].Table != "public.journal" {
		t.Fatalf("list after a rename: %+v, %v; want public.journal", entries, err)
	}
	h.exec(`DROP TABLE journal`)
	h.exec(`CREATE TABLE journal (id int PRIMARY KEY, v text)`)
	h.exec(`INSERT INTO journal VALUES (3, 'c')`)
	time.Sleep(500 * time.Millisecond)
	h.stopAgent()

	ops := sourceOps(t, h.spine.Events())
	want := []string{"pgaudit-cdc WATCH", "books INSERT", "pgaudit-cdc REWATCH", "books INSERT", "pgaudit-cdc DROP"}
	if fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", ops, want)
	}
	evs := withoutTrail(h.spine.Events())
	if got := field(t, evs[2], "previous", "table"); got != "public.ledger" {
		t.Fatalf("the rename's REWATCH shows previous table %v, want public.ledger", got)
	}
	drop := evs[4]
	if field(t, drop, "previous", "table") != "public.journal" || field(t, drop, "watch", "dropped_at") == nil {
		t.Fatalf("DROP event: %s", jsonOf(t, drop.Payload))
	}
	entries, err = newRegistry(h).List(context.Background(), true)
	if err != nil || len(entries) != 1 || entries[0].Active || entries[0].DroppedAt == nil {
		t.Fatalf("list after the drop: %+v, %v; want one inactive, dropped watch", entries, err)
	}
}
