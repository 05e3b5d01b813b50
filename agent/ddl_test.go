package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// story tells the trail in short: a self-audit event as its operation and
// the table it concerns (with its origin or how), a change as its operation,
// table and row id.
func story(t *testing.T, evs []spinetest.Event) string {
	t.Helper()
	var lines []string
	for _, e := range withoutTrail(evs) {
		op := fmt.Sprint(field(t, e, "operation"))
		switch {
		case op == envelope.OpRewrite:
			lines = append(lines, fmt.Sprintf("%s %v (%v: %v, %v by %v)", op, field(t, e, "table"), field(t, e, "rewrite", "table"),
				field(t, e, "rewrite", "reason"), field(t, e, "rewrite", "command"), field(t, e, "changed_by")))
		case e.Source != envelope.SelfAuditSource:
			row := field(t, e, "new", "id")
			if row == nil {
				row = field(t, e, "old", "id")
			}
			line := fmt.Sprintf("%s %v %v", op, field(t, e, "table"), row)
			if p := field(t, e, "partition", "table"); p != nil {
				line += fmt.Sprintf(" (partition %v by %v)", p, field(t, e, "changed_by"))
			}
			lines = append(lines, line)
		case op == envelope.OpAttach || op == envelope.OpDetach || op == envelope.OpUnlogged || op == envelope.OpUnaudited:
			lines = append(lines, fmt.Sprintf("%s %v %v (%v)", op, field(t, e, "partition", "table"),
				field(t, e, "partition", "partitioned_table"), field(t, e, "partition", "how")))
		case op == envelope.OpWatch || op == envelope.OpRewatch:
			line := fmt.Sprintf("%s %v", op, field(t, e, "watch", "table"))
			if o, ok := field(t, e, "watch", "origin").(map[string]any); ok {
				for k, v := range o {
					line += fmt.Sprintf(" (%s %v)", k, v)
				}
			}
			lines = append(lines, line)
		default:
			lines = append(lines, fmt.Sprintf("%s %v", op, field(t, e, "previous", "table")))
		}
	}
	return strings.Join(lines, "\n")
}

// waitStory waits until the trail tells want.
func (h *harness) waitStory(want string) {
	h.t.Helper()
	deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
	for {
		got := story(h.t, h.spine.Events())
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the trail tells\n%s\n\nwant\n%s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond every 100 ms until it holds, and fails with the
// message (format and args) when within has passed first.
func waitFor(t *testing.T, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDetachChangeAttach: a partition detached from a watched partitioned
// table stays audited by a watch of its own, from the DETACH on, in the
// DETACH's transaction too; DETACH and ATTACH are self-audit events.
func TestDetachChangeAttach(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE pt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (100)`)
	h.exec(`INSERT INTO pt VALUES (1, 'a'), (2, 'b'), (3, 'c')`)
	h.watch("pt", "other", "books")
	h.startAgent()

	h.exec(`ALTER TABLE pt DETACH PARTITION pt1`)
	h.exec(`UPDATE pt1 SET v = 'tampered' WHERE id = 2`)
	h.exec(`DELETE FROM pt1 WHERE id = 3`)
	h.exec(`ALTER TABLE pt ATTACH PARTITION pt1 FOR VALUES FROM (0) TO (100)`)
	h.exec(`UPDATE pt SET v = 'after' WHERE id = 1`)
	// In one transaction: the change right after the DETACH is audited.
	h.exec(`BEGIN; ALTER TABLE pt DETACH PARTITION pt1; INSERT INTO pt1 VALUES (4, 'd'); ALTER TABLE pt ATTACH PARTITION pt1 FOR VALUES FROM (0) TO (100); COMMIT`)
	h.exec(`ALTER TABLE pt DETACH PARTITION pt1 CONCURRENTLY`)
	h.exec(`DELETE FROM pt1 WHERE id = 4`)
	h.exec(`CREATE TABLE pt2 PARTITION OF pt FOR VALUES FROM (100) TO (200)`)
	h.exec(`INSERT INTO pt VALUES (150, 'x')`)
	h.exec(`DROP TABLE pt2`)

	// On PostgreSQL 14 a change made while detached, in a transaction that
	// attaches the table again, comes under the partitioned table's name
	// (pgoutput's relation cache): audited all the same, with the same kind
	// and source.
	inTxDetached := "INSERT public.pt1 4"
	if schemaWatchVersion(t, h) < 150000 {
		inTxDetached = "INSERT public.pt 4"
	}
	h.waitStory(strings.Join([]string{
		"WATCH public.pt",
		"DETACH public.pt1 public.pt (detached)",
		"WATCH public.pt1 (detached_from public.pt)",
		"UPDATE public.pt1 2",
		"DELETE public.pt1 3",
		"ATTACH public.pt1 public.pt (attached)",
		"UPDATE public.pt 1",
		"DETACH public.pt1 public.pt (detached)",
		inTxDetached,
		"ATTACH public.pt1 public.pt (attached)",
		"DETACH public.pt1 public.pt (detached)",
		"DELETE public.pt1 4",
		"ATTACH public.pt2 public.pt (created)",
		"INSERT public.pt 150",
		"DETACH public.pt2 public.pt (dropped)",
	}, "\n"))
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == envelope.OpDetach && field(t, e, "changed_by") != "postgres" {
			t.Errorf("DETACH without who: %s", jsonOf(t, e.Payload))
		}
	}
	entries, err := newRegistry(h).List(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Table+" "+e.Kind+"/"+e.Source)
	}
	if got := strings.Join(names, ", "); got != "public.pt other/books, public.pt1 other/books" {
		t.Errorf("watches after the detach: %s", got)
	}
}

// TestUnloggedPartitionStaysLogged: a partition of a watched partitioned
// table set UNLOGGED, created UNLOGGED or attached UNLOGGED would keep its
// changes out of the WAL, so out of the trail; the DDL event trigger sets
// it LOGGED again in the DDL's own transaction, so every change is
// audited and no hole needs declaring.
func TestUnloggedPartitionStaysLogged(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE upt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE upt1 PARTITION OF upt FOR VALUES FROM (0) TO (100)`)
	h.watch("upt", "other", "books")
	h.startAgent()
	h.exec(`ALTER TABLE upt1 SET UNLOGGED`)
	h.exec(`INSERT INTO upt VALUES (1, 'a')`)
	h.exec(`BEGIN; CREATE UNLOGGED TABLE upt2 PARTITION OF upt FOR VALUES FROM (100) TO (200); INSERT INTO upt VALUES (150, 'b'); COMMIT`)
	h.exec(`CREATE UNLOGGED TABLE upt3 (id int PRIMARY KEY, v text)`)
	h.exec(`ALTER TABLE upt ATTACH PARTITION upt3 FOR VALUES FROM (200) TO (300)`)
	h.exec(`INSERT INTO upt VALUES (250, 'c')`)
	h.waitStory(strings.Join([]string{
		"WATCH public.upt",
		"INSERT public.upt 1",
		"ATTACH public.upt2 public.upt (created)",
		"INSERT public.upt 150",
		"ATTACH public.upt3 public.upt (attached)",
		"INSERT public.upt 250",
	}, "\n"))
	var unlogged int
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_class WHERE relname IN ('upt1', 'upt2', 'upt3') AND relpersistence <> 'p'`).Scan(&unlogged); err != nil {
		t.Fatal(err)
	}
	if unlogged != 0 {
		t.Fatalf("%d partitions of the watched table stayed unlogged", unlogged)
	}
}

// TestUnloggedPartitionWithoutEventTrigger: without the event triggers,
// the housekeeping finds a partition of a watched table UNLOGGED, declares
// the hole in the trail (an UNLOGGED event; the changes made meanwhile are
// not in the WAL) and sets it LOGGED again: later changes are audited, and
// a second time is a second event. An unlogged inheritance child is set
// LOGGED and then watched.
func TestUnloggedPartitionWithoutEventTrigger(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	h.exec(`CREATE TABLE upt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE upt1 PARTITION OF upt FOR VALUES FROM (0) TO (100)`)
	h.exec(`CREATE TABLE acc (id int PRIMARY KEY, v text)`)
	h.watch("upt", "other", "books")
	h.watch("acc", "other", "books")
	h.startAgentWith(func(c *agent.Config) { c.HousekeepingInterval = housekeepingInterval })
	h.exec(`DROP EVENT TRIGGER IF EXISTS ` + watches.DropTriggerName)
	h.exec(`DROP EVENT TRIGGER IF EXISTS ` + watches.EventTriggerName)
	h.exec(`INSERT INTO upt VALUES (1, 'a')`)
	h.waitEvents(1, 30*time.Second)
	logged := func() bool {
		var p string
		if err := h.conn.QueryRow(context.Background(), `SELECT relpersistence FROM pg_class WHERE relname = 'upt1'`).Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p == "p"
	}
	for round := 1; round <= 2; round++ {
		// One transaction: no housekeeping round finds the partition
		// unlogged before the change that must not be in the WAL.
		h.exec(fmt.Sprintf(`ALTER TABLE upt1 SET UNLOGGED; INSERT INTO upt VALUES (%d, 'unseen')`, 10*round))
		waitFor(t, housekeepingWait, logged, "round %d: the partition is still unlogged %s later", round, housekeepingWait)
		h.exec(`INSERT INTO upt VALUES ($1, 'seen')`, 10*round+1)
	}
	// An unlogged inheritance child: set LOGGED, then watched the round
	// after.
	h.exec(`CREATE UNLOGGED TABLE ukid () INHERITS (acc)`)
	waitFor(t, 2*housekeepingWait, func() bool {
		var watched bool
		if err := h.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pgaudit_cdc.watches WHERE table_name = 'ukid' AND active)`).Scan(&watched); err != nil {
			t.Fatal(err)
		}
		return watched
	}, "the unlogged child of a watched table is not watched %s later", 2*housekeepingWait)
	h.exec(`INSERT INTO ukid VALUES (31, 'seen')`)
	h.waitStory(strings.Join([]string{
		"WATCH public.upt",
		"WATCH public.acc",
		"INSERT public.upt 1",
		"UNLOGGED public.upt1 public.upt (unlogged)",
		"INSERT public.upt 11",
		"UNLOGGED public.upt1 public.upt (unlogged)",
		"INSERT public.upt 21",
		"WATCH public.ukid (inherits_from public.acc)",
		"INSERT public.ukid 31",
	}, "\n"))
	obs.expectMetric(t, 3, "pgaudit_cdc_unlogged_partitions_total")
	obs.expectLog(t, 3, "level=ERROR", "tables under watched tables were UNLOGGED")
}

// TestPartitionTruncate: PostgreSQL publishes a partition's changes as its
// partitioned table's, but sends nothing for a TRUNCATE of the partition by
// itself. Each partition's TRUNCATE trigger makes it a TRUNCATE event of
// the partitioned table that names the partition; a TRUNCATE of the
// partitioned table, which fires them all, stays one event. The event
// triggers put back a trigger that the partition's owner disables, drops or
// replaces, in the DDL's own transaction: the TRUNCATE right after is in
// the trail.
func TestPartitionTruncate(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE ptt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE ptt1 PARTITION OF ptt FOR VALUES FROM (0) TO (100)`)
	h.exec(`CREATE TABLE ptt2 PARTITION OF ptt FOR VALUES FROM (100) TO (200)`)
	h.exec(`INSERT INTO ptt VALUES (1, 'a'), (101, 'b')`)
	h.ownerRole("ptt_owner")
	h.exec(`ALTER TABLE ptt1 OWNER TO ptt_owner`)
	h.exec(`CREATE FUNCTION ptt_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`)
	h.watch("ptt", "other", "books")
	h.startAgent()

	h.exec(`SET SESSION AUTHORIZATION ptt_owner; TRUNCATE ptt1; RESET SESSION AUTHORIZATION`)
	h.exec(`INSERT INTO ptt VALUES (2, 'c')`)
	h.exec(`TRUNCATE ptt`)
	// The partitions the partitioned table's TRUNCATE emptied add nothing
	// until a change; after it, they are truncated again.
	h.exec(`BEGIN; INSERT INTO ptt VALUES (3, 'd'); TRUNCATE ptt; TRUNCATE ptt2; INSERT INTO ptt VALUES (102, 'e'); TRUNCATE ptt2; COMMIT`)
	// The owner takes the trigger away and truncates, in one transaction.
	h.exec(`SET SESSION AUTHORIZATION ptt_owner; ALTER TABLE ptt1 DISABLE TRIGGER USER; TRUNCATE ptt1; RESET SESSION AUTHORIZATION`)
	h.exec(`BEGIN; SET LOCAL SESSION AUTHORIZATION ptt_owner; DROP TRIGGER pgaudit_cdc_truncate ON ptt1; TRUNCATE ptt1; COMMIT`)
	h.exec(`GRANT EXECUTE ON FUNCTION ptt_noop() TO ptt_owner`)
	h.exec(`SET SESSION AUTHORIZATION ptt_owner; CREATE OR REPLACE TRIGGER pgaudit_cdc_truncate AFTER TRUNCATE ON ptt1 FOR EACH STATEMENT EXECUTE FUNCTION ptt_noop(); TRUNCATE ptt1; RESET SESSION AUTHORIZATION`)
	// Partitions made later, at any level, have the trigger from their
	// CREATE on.
	h.exec(`BEGIN; CREATE TABLE ptt3 PARTITION OF ptt FOR VALUES FROM (200) TO (300) PARTITION BY RANGE (id);
		CREATE TABLE ptt3a PARTITION OF ptt3 FOR VALUES FROM (200) TO (250); TRUNCATE ptt3; COMMIT`)
	h.exec(`INSERT INTO ptt VALUES (201, 'f')`)
	// A trigger gone by a route no event trigger saw (here: with them
	// switched off) is a hole: the next DDL on the table declares it, even
	// though it puts the trigger back.
	// (The trigger on ptt1 has another name now: CREATE OR REPLACE took
	// pgaudit_cdc_truncate.)
	var ours string
	if err := h.conn.QueryRow(context.Background(), `SELECT tgname FROM pg_trigger WHERE tgrelid = 'ptt1'::regclass
		AND tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure`).Scan(&ours); err != nil {
		t.Fatal(err)
	}
	h.exec(`ALTER EVENT TRIGGER ` + watches.TriggerDroppedName + ` DISABLE`)
	h.exec(`DROP TRIGGER ` + pgx.Identifier{ours}.Sanitize() + ` ON ptt1`)
	h.exec(`ALTER EVENT TRIGGER ` + watches.TriggerDroppedName + ` ENABLE`)
	h.exec(`TRUNCATE ptt1`)
	h.exec(`ALTER TABLE ptt1 SET (fillfactor = 90); TRUNCATE ptt1`)
	// A partition that leaves forgets its trigger: dropped while detached,
	// it is given one again, quietly, when attached.
	h.exec(`ALTER TABLE ptt DETACH PARTITION ptt2`)
	h.exec(`DROP TRIGGER pgaudit_cdc_truncate ON ptt2`)
	h.exec(`ALTER TABLE ptt ATTACH PARTITION ptt2 FOR VALUES FROM (100) TO (200); TRUNCATE ptt2`)
	h.waitStory(strings.Join([]string{
		"WATCH public.ptt",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by ptt_owner)",
		"INSERT public.ptt 2",
		"TRUNCATE public.ptt <nil>",
		"INSERT public.ptt 3",
		"TRUNCATE public.ptt <nil>",
		"INSERT public.ptt 102",
		"TRUNCATE public.ptt <nil> (partition public.ptt2 by postgres)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by ptt_owner)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by ptt_owner)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by ptt_owner)",
		"ATTACH public.ptt3 public.ptt (created)",
		"ATTACH public.ptt3a public.ptt (created)",
		"TRUNCATE public.ptt <nil> (partition public.ptt3a by postgres)",
		"INSERT public.ptt 201",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
		"DETACH public.ptt2 public.ptt (detached)",
		"WATCH public.ptt2 (detached_from public.ptt)",
		"ATTACH public.ptt2 public.ptt (attached)",
		"TRUNCATE public.ptt <nil> (partition public.ptt2 by postgres)",
	}, "\n"))
	// Nobody else can put the trigger's function on a table of theirs.
	_, err := h.conn.Exec(context.Background(), `SET SESSION AUTHORIZATION ptt_owner; CREATE TABLE ptt_own (id int);
		CREATE TRIGGER forge AFTER TRUNCATE ON ptt_own FOR EACH STATEMENT EXECUTE FUNCTION pgaudit_cdc.partition_truncated()`)
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("another role put the TRUNCATE trigger's function on a table: %v", err)
	}
}

// TestPartitionTruncateNearStackLimit: a partition's owner runs the DDL that
// disables its TRUNCATE trigger from so deep a recursion that the DDL fits
// under max_stack_depth but the event trigger's work may not, truncates,
// and enables the trigger again. Whatever the depth, the trail has the
// TRUNCATE or declares the hole (UNAUDITED): the event trigger never fails
// open in silence.
func TestPartitionTruncateNearStackLimit(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.exec(`CREATE TABLE ptt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE ptt1 PARTITION OF ptt FOR VALUES FROM (0) TO (100)`)
	h.ownerRole("ptt_deep")
	h.exec(`ALTER TABLE ptt1 OWNER TO ptt_deep`)
	h.exec(`GRANT INSERT ON ptt TO ptt_deep`)
	h.exec(`CREATE FUNCTION ptt_rec(n int, ddl text) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN IF n = 0 THEN EXECUTE ddl; RETURN 0; END IF; RETURN ptt_rec(n - 1, ddl) + 1; END $$`)
	h.watch("ptt", "other", "books")
	h.startAgent()
	var ours string
	if err := h.conn.QueryRow(ctx, `SELECT tgname FROM pg_trigger WHERE tgrelid = 'ptt1'::regclass
		AND tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure`).Scan(&ours); err != nil {
		t.Fatal(err)
	}
	deep := pgtest.Connect(t, h.dsn)
	if _, err := deep.Exec(ctx, `SET SESSION AUTHORIZATION ptt_deep`); err != nil {
		t.Fatal(err)
	}
	disable := `ALTER TABLE ptt1 DISABLE TRIGGER ` + pgx.Identifier{ours}.Sanitize()
	// From too deep (the DDL itself fails) down to depths where it runs:
	// the first that runs is the one nearest the limit.
	ran := -1
	for depth := 4000; depth >= 0 && ran < 0; depth -= 7 {
		tx, err := deep.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ptt VALUES (1, 'gone')`); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `SELECT ptt_rec($1, $2)`, depth, disable); err != nil {
			_ = tx.Rollback(ctx)
			continue
		}
		for _, sql := range []string{`TRUNCATE ptt1`, `ALTER TABLE ptt1 ENABLE ALWAYS TRIGGER ` + pgx.Identifier{ours}.Sanitize()} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		ran = depth
	}
	if ran < 0 {
		t.Fatal("the DDL never ran, at any depth")
	}
	t.Logf("the DDL ran at depth %d", ran)
	h.exec(`INSERT INTO ptt VALUES (2, 'after')`)
	deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
	for {
		got := story(t, h.spine.Events())
		if strings.HasSuffix(got, "INSERT public.ptt 2") {
			if !strings.Contains(got, "TRUNCATE public.ptt <nil> (partition public.ptt1 by ptt_deep)") &&
				!strings.Contains(got, "UNAUDITED public.ptt1 public.ptt (unaudited)") {
				t.Fatalf("the TRUNCATE at depth %d is neither in the trail nor declared:\n%s", ran, got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the trail tells\n%s", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPartitionTruncateWithoutEventTrigger: without the event triggers, a
// partition's owner who drops or disables its TRUNCATE trigger can
// truncate it unaudited until the housekeeping puts the trigger back; the
// housekeeping declares that hole (an UNAUDITED event), and the next
// TRUNCATE is audited.
func TestPartitionTruncateWithoutEventTrigger(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	h.exec(`CREATE TABLE ptt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE ptt1 PARTITION OF ptt FOR VALUES FROM (0) TO (100)`)
	h.watch("ptt", "other", "books")
	h.startAgentWith(func(c *agent.Config) { c.HousekeepingInterval = housekeepingInterval })
	for _, name := range watches.EventTriggerNames {
		h.exec(`DROP EVENT TRIGGER IF EXISTS ` + name)
	}
	h.exec(`INSERT INTO ptt VALUES (1, 'a')`)
	audited := func() bool {
		var n int
		if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ptt1'::regclass AND tgenabled = 'A'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	for round, takeAway := range []string{`DROP TRIGGER pgaudit_cdc_truncate ON ptt1`, `ALTER TABLE ptt1 DISABLE TRIGGER USER`} {
		// One transaction: no housekeeping round puts the trigger back
		// before the TRUNCATE that must not be in the trail.
		h.exec(fmt.Sprintf(`INSERT INTO ptt VALUES (%d, 'seen'); %s; TRUNCATE ptt1`, 10*round+10, takeAway))
		waitFor(t, housekeepingWait, audited, "round %d: the TRUNCATE trigger is still missing %s later", round, housekeepingWait)
		h.exec(`TRUNCATE ptt1`)
	}
	// A writer holding the partition's lock keeps the trigger from coming
	// back, not the hole from being declared.
	h.exec(`ALTER TABLE ptt1 DISABLE TRIGGER USER`)
	holder := pgtest.Connect(t, h.dsn)
	if _, err := holder.Exec(context.Background(), `BEGIN; INSERT INTO ptt VALUES (5, 'held')`); err != nil {
		t.Fatal(err)
	}
	h.waitStory(strings.Join([]string{
		"WATCH public.ptt",
		"INSERT public.ptt 1",
		"INSERT public.ptt 10",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
		"INSERT public.ptt 20",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
	}, "\n"))
	if audited() {
		t.Fatal("the trigger came back while a writer held the partition's lock")
	}
	if _, err := holder.Exec(context.Background(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, housekeepingWait, audited, "the TRUNCATE trigger is still disabled %s after the writer committed", housekeepingWait)
	h.exec(`TRUNCATE ptt1`)
	h.waitStory(strings.Join([]string{
		"WATCH public.ptt",
		"INSERT public.ptt 1",
		"INSERT public.ptt 10",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
		"INSERT public.ptt 20",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
		"UNAUDITED public.ptt1 public.ptt (unaudited)",
		"INSERT public.ptt 5",
		"TRUNCATE public.ptt <nil> (partition public.ptt1 by postgres)",
	}, "\n"))
	obs.expectMetric(t, 1, "pgaudit_cdc_unaudited_truncates_total", "state", "dropped")
	obs.expectMetric(t, 2, "pgaudit_cdc_unaudited_truncates_total", "state", "disabled")
	obs.expectLog(t, 3, "level=ERROR", "the triggers that audit TRUNCATE of partitions of watched tables were dropped or disabled")
}

// TestTableRewriteIsDeclared: DDL that rewrites a watched table's stored
// values (ALTER COLUMN ... TYPE ... USING, ADD COLUMN with a volatile
// default) changes every row without a row event; the table_rewrite event
// trigger declares it, in the DDL's transaction, as a REWRITE event of the
// table's watch (of the partitioned table's, naming the partition). A
// rewrite that copies the values as they are (SET UNLOGGED/LOGGED) and a
// fast default are not declared.
func TestTableRewriteIsDeclared(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE rw (id int PRIMARY KEY, v text)`)
	h.exec(`INSERT INTO rw VALUES (1, 'a')`)
	h.exec(`CREATE TABLE rwp (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)`)
	h.exec(`CREATE TABLE rwp1 PARTITION OF rwp FOR VALUES FROM (0) TO (100)`)
	h.exec(`INSERT INTO rwp VALUES (1, 'a')`)
	h.exec(`CREATE TABLE rw_other (id int PRIMARY KEY, v text)`)
	h.ownerRole("rw_owner")
	h.exec(`ALTER TABLE rw OWNER TO rw_owner`)
	h.watch("rw", "other", "books")
	h.watch("rwp", "other", "ledger")
	h.startAgent()

	h.exec(`SET SESSION AUTHORIZATION rw_owner; ALTER TABLE rw ALTER COLUMN v TYPE text USING upper(v); RESET SESSION AUTHORIZATION`)
	h.exec(`UPDATE rw SET v = 'b' WHERE id = 1`)
	h.exec(`ALTER TABLE rw ADD COLUMN at timestamptz DEFAULT clock_timestamp()`)
	h.exec(`ALTER TABLE rw ADD COLUMN n int DEFAULT 0`)
	h.exec(`ALTER TABLE rwp ALTER COLUMN v TYPE varchar(20) USING 'x'`)
	h.exec(`ALTER TABLE rw_other ALTER COLUMN v TYPE text USING upper(v)`)
	h.exec(`INSERT INTO rw (id, v) VALUES (2, 'c')`)
	h.waitStory(strings.Join([]string{
		"WATCH public.rw",
		"WATCH public.rwp",
		"REWRITE public.rw (public.rw: column type, ALTER TABLE by rw_owner)",
		"UPDATE public.rw 1",
		"REWRITE public.rw (public.rw: column default, ALTER TABLE by postgres)",
		"REWRITE public.rwp (public.rwp1: column type, ALTER TABLE by postgres)",
		"INSERT public.rw 2",
	}, "\n"))
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == envelope.OpRewrite && field(t, e, "table") == "public.rwp" && e.Source != "ledger" {
			t.Errorf("the partition's REWRITE is not under its partitioned table's watch: source %q", e.Source)
		}
	}
	// Nobody else can write a rewrite: it would restart verify's fold.
	_, err := h.conn.Exec(context.Background(), `SET SESSION AUTHORIZATION rw_owner;
		INSERT INTO pgaudit_cdc.rewrites (table_oid, watch_oid, schema_name, table_name, watched_name, reason, command) VALUES (1, 1, 'public', 'x', 'x', 'x', 'x')`)
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("another role wrote a rewrite: %v", err)
	}
}

// TestInheritanceChildrenAreWatched: a table that inherits from a watched
// table holds rows every query of it reads, but a publication holds only
// the tables it was given. Each child gets a watch of its own (origin
// inherits_from), one that existed before the watch in the watch's
// transaction, a new one (created with INHERITS, made to INHERIT, created
// UNLOGGED) in its DDL's: every row written to one is audited, in the
// creating transaction too.
func TestInheritanceChildrenAreWatched(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE acc (id int PRIMARY KEY, v text)`)
	h.exec(`CREATE TABLE pre () INHERITS (acc)`)
	h.exec(`CREATE TABLE pre2 () INHERITS (pre)`)
	h.watch("acc", "other", "books")
	h.startAgent()
	h.exec(`INSERT INTO pre VALUES (1, 'pre')`)
	h.exec(`BEGIN; CREATE TABLE kid () INHERITS (acc); INSERT INTO kid VALUES (2, 'kid'); COMMIT`)
	h.exec(`CREATE UNLOGGED TABLE ukid () INHERITS (acc)`)
	h.exec(`INSERT INTO ukid VALUES (3, 'unlogged')`)
	h.exec(`CREATE TABLE later (id int PRIMARY KEY, v text)`)
	h.exec(`ALTER TABLE later INHERIT acc`)
	h.exec(`INSERT INTO later VALUES (4, 'later')`)
	h.exec(`INSERT INTO acc VALUES (5, 'parent')`)
	h.exec(`CREATE TABLE gkid () INHERITS (kid)`)
	h.exec(`INSERT INTO gkid VALUES (6, 'grandchild'); INSERT INTO pre2 VALUES (7, 'grandchild')`)
	// The parent unwatched, its children keep their watches and stay
	// published.
	if _, err := newRegistry(h).Unwatch(context.Background(), mustName(t, "acc")); err != nil {
		t.Fatal(err)
	}
	h.exec(`INSERT INTO kid VALUES (8, 'after')`)
	h.waitStory(strings.Join([]string{
		"WATCH public.acc",
		"WATCH public.pre (inherits_from public.acc)",
		"WATCH public.pre2 (inherits_from public.pre)",
		"INSERT public.pre 1",
		"WATCH public.kid (inherits_from public.acc)",
		"INSERT public.kid 2",
		"WATCH public.ukid (inherits_from public.acc)",
		"INSERT public.ukid 3",
		"WATCH public.later (inherits_from public.acc)",
		"INSERT public.later 4",
		"INSERT public.acc 5",
		"WATCH public.gkid (inherits_from public.kid)",
		"INSERT public.gkid 6",
		"INSERT public.pre2 7",
		"UNWATCH public.acc",
		"INSERT public.kid 8",
	}, "\n"))
	var total int
	if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM acc`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != 8 {
		t.Fatalf("acc reads %d rows, want the 8 audited", total)
	}
}

// TestTableSwap: a table that takes the name a watch was made for, while
// the watched table lives on renamed, is audited from its first change, in
// the swapping transaction too; the renamed one stays audited until dropped.
func TestTableSwap(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE t (id int PRIMARY KEY, v text)`)
	h.watch("t", "other", "app")
	h.startAgent()

	h.exec(`BEGIN; ALTER TABLE t RENAME TO t_old; CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t VALUES (2, 'x'); INSERT INTO t_old VALUES (3, 'y'); DROP TABLE t_old; COMMIT`)
	h.exec(`INSERT INTO t VALUES (4, 'z')`)
	// The other way to swap: a copy renamed into place.
	h.exec(`CREATE TABLE t_new (id int PRIMARY KEY, v text)`)
	h.exec(`BEGIN; ALTER TABLE t RENAME TO t_prev; ALTER TABLE t_new RENAME TO t; INSERT INTO t VALUES (5, 'w'); COMMIT`)
	h.exec(`UPDATE t SET v = 'ww' WHERE id = 5`)
	h.exec(`DELETE FROM t_prev WHERE id = 4`)

	h.waitStory(strings.Join([]string{
		"WATCH public.t",
		"REWATCH public.t_old",
		"WATCH public.t (took_name_from public.t_old)",
		"INSERT public.t 2",
		"INSERT public.t_old 3",
		"DROP public.t_old",
		"INSERT public.t 4",
		"REWATCH public.t_prev (took_name_from public.t_old)", // a watch keeps its origin
		"WATCH public.t (took_name_from public.t_prev)",
		"INSERT public.t 5",
		"UPDATE public.t 5",
		"DELETE public.t_prev 4",
	}, "\n"))
	var ident string
	if err := h.conn.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = 'public.t'::regclass`).Scan(&ident); err != nil || ident != "f" {
		t.Errorf("the swapped-in table has REPLICA IDENTITY %q (%v), want FULL", ident, err)
	}
}

// TestTableSwapKeepsColumnControl: the swapped-in table's watch keeps the
// row filter and the excluded columns of the watch whose name it took: a
// swap never sends what the operator kept out of the trail.
func TestTableSwapKeepsColumnControl(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE acct (id int PRIMARY KEY, owner text, ssn text)`)
	if err := h.watchWith("acct", "other", "bank", watches.Options{RowFilter: "id < 100", ExcludeColumns: []string{"ssn"}}); err != nil {
		t.Fatal(err)
	}
	h.startAgent()
	h.exec(`BEGIN; ALTER TABLE acct RENAME TO acct_old; CREATE TABLE acct (id int PRIMARY KEY, owner text, ssn text);
		INSERT INTO acct VALUES (1, 'ann', '123-45-6789'), (500, 'bob', '987-65-4321'); COMMIT`)
	h.waitStory(strings.Join([]string{
		"WATCH public.acct",
		"REWATCH public.acct_old",
		"WATCH public.acct (took_name_from public.acct_old)",
		"INSERT public.acct 1",
	}, "\n"))
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == envelope.OpInsert && field(t, e, "new", "ssn") != nil {
			t.Fatalf("the swapped-in table's event carries the excluded column: %s", jsonOf(t, e.Payload))
		}
	}
	var w map[string]any
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == envelope.OpWatch && field(t, e, "watch", "origin") != nil {
			w, _ = field(t, e, "watch").(map[string]any)
		}
	}
	if fmt.Sprint(w["row_filter"]) != "id < 100" || fmt.Sprint(w["exclude_columns"]) != "[ssn]" {
		t.Fatalf("the adopted watch: %v, want the row filter and excluded column of the original", w)
	}
}
