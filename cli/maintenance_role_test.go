package cli

// Issue 10, item 2 and "Table lifecycle": the maintenance role that
// `setup --print-sql --maintenance-role NAME` grants may skip row events and
// nothing else, application roles may not skip at all, and doctor warns of a
// new table that took the name of a dropped watched one.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// mrTx connects to dsn, runs sqls in one transaction and commits; it
// returns the first error (the transaction is then rolled back).
func mrTx(t *testing.T, dsn string, sqls ...string) error {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	for _, sql := range sqls {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// mrWantDenied fails unless err is SQLSTATE 42501 and its message holds
// every one of words.
func mrWantDenied(t *testing.T, what string, err error, words ...string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InsufficientPrivilege {
		t.Errorf("%s: got %v, want SQLSTATE 42501 (insufficient privilege)", what, err)
		return
	}
	for _, w := range words {
		if !strings.Contains(pgErr.Message, w) {
			t.Errorf("%s: %q does not mention %q", what, pgErr.Message, w)
		}
	}
}

// mrAs returns dsn connecting as role with password x.
func mrAs(t *testing.T, dsn, role string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "x")
	return u.String()
}

// TestMaintenanceRoleSetupSQL runs what `setup --print-sql --maintenance-role`
// prints, as its comments say: the role set-up as a superuser before the
// first watch, the maintenance grants after it as the agent's role. Then the
// maintenance role can skip row events inside its transaction but cannot
// authorise a backfill chunk or a checkpoint (row security on
// pgaudit_cdc.control), and an application role cannot skip at all.
func TestMaintenanceRoleSetupSQL(t *testing.T) {
	// Roles are cluster-wide: a suffix of their own, and a clean-up
	// registered before the database's, so that it runs after the database
	// (and everything in it the roles own or were granted) is gone.
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	sfx := hex.EncodeToString(b[:])
	agentRole, owner, maint, app := "agent_"+sfx, "owner_"+sfx, "maint_"+sfx, "app_"+sfx
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, pgtest.AdminDSN(t))
		if err != nil {
			t.Errorf("clean-up: %v", err)
			return
		}
		defer conn.Close(ctx)
		for _, r := range []string{app, maint, agentRole, owner} {
			if _, err := conn.Exec(ctx, `DROP ROLE IF EXISTS `+r); err != nil {
				t.Errorf("clean-up: DROP ROLE %s: %v", r, err)
			}
		}
	})
	adminDSN := pgtest.DSN(t)
	u, _ := url.Parse(adminDSN)
	db := strings.TrimPrefix(u.Path, "/")

	exec(t, adminDSN, `CREATE ROLE `+owner+` NOLOGIN`)
	exec(t, adminDSN, `CREATE ROLE `+maint+` LOGIN PASSWORD 'x'`)
	exec(t, adminDSN, `CREATE ROLE `+app+` LOGIN PASSWORD 'x'`)
	exec(t, adminDSN, `CREATE TABLE orders (id int PRIMARY KEY, total numeric)`)
	exec(t, adminDSN, `INSERT INTO orders SELECT g, g FROM generate_series(1, 5) g`)
	exec(t, adminDSN, `ALTER TABLE orders OWNER TO `+owner)
	exec(t, adminDSN, `GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO `+maint+`, `+app)

	printed := mustRun(t, map[string]string{"DATABASE_URL": "", "AUDIT_STREAM_URL": ""}, "setup", "--print-sql",
		"--role", agentRole, "--database", db, "--table-owner", owner, "--maintenance-role", maint)
	for _, want := range []string{
		`GRANT USAGE ON SCHEMA pgaudit_cdc TO "` + maint + `";`,
		`GRANT INSERT ON pgaudit_cdc.control TO "` + maint + `";`,
		`GRANT USAGE ON SEQUENCE pgaudit_cdc.control_id_seq TO "` + maint + `";`,
		`GRANT EXECUTE ON FUNCTION pgaudit_cdc.skip(text) TO "` + maint + `";`,
		`run as "` + agentRole + `"`,
	} {
		if !strings.Contains(printed, want) {
			t.Fatalf("setup --print-sql --maintenance-role lacks %q:\n%s", want, printed)
		}
	}
	// The DBA's part (steps 1 to 4) before the first watch, as a
	// superuser; step 5, the maintenance grants, after it.
	cut := strings.Index(printed, "\n-- 5.")
	if cut < 0 {
		t.Fatalf("no step 5 in the printed SQL:\n%s", printed)
	}
	dba, grants := printed[:cut], printed[cut:]
	if strings.Contains(grants, "CREATE ROLE") || !strings.Contains(dba, "CREATE ROLE") {
		t.Fatalf("unexpected layout of the printed SQL:\n%s", printed)
	}
	if strings.Count(dba, "'change-me'") != 1 {
		t.Fatalf("want one 'change-me' password in the role's set-up:\n%s", dba)
	}
	exec(t, adminDSN, strings.Replace(dba, "'change-me'", "'x'", 1))

	agentDSN := mrAs(t, adminDSN, agentRole)
	mustRun(t, map[string]string{"DATABASE_URL": agentDSN, "AUDIT_STREAM_URL": ""}, "watch", "orders", "--kind", "other", "--source", "shop")
	exec(t, agentDSN, grants)

	maintDSN, appDSN := mrAs(t, adminDSN, maint), mrAs(t, adminDSN, app)

	// The maintenance role skips, in the transaction of its bulk job.
	if err := mrTx(t, maintDSN, `SET application_name = 'nightly'`, `SELECT pgaudit_cdc.skip('reindex')`,
		`UPDATE orders SET total = total + 1`); err != nil {
		t.Fatalf("pgaudit_cdc.skip as the maintenance role: %v", err)
	}
	var action, reason, byRole, appName string
	queryRow(t, adminDSN, `SELECT action, reason, by_role, application_name FROM pgaudit_cdc.control ORDER BY id DESC LIMIT 1`,
		&action, &reason, &byRole, &appName)
	if action != "skip" || reason != "reindex" || byRole != maint || appName != "nightly" {
		t.Errorf("control row after skip: action %q reason %q by %q application %q; want skip, reindex, %s, nightly", action, reason, byRole, appName, maint)
	}

	// It cannot authorise a backfill chunk or a checkpoint: row security
	// lets it insert skip rows only.
	mrWantDenied(t, "backfill authorisation row as the maintenance role",
		mrTx(t, maintDSN, `INSERT INTO pgaudit_cdc.control (action, table_oid, digest) VALUES ('backfill', 'orders'::regclass, repeat('0', 64))`),
		"row-level security")
	mrWantDenied(t, "checkpoint authorisation row as the maintenance role",
		mrTx(t, maintDSN, `INSERT INTO pgaudit_cdc.control (action, table_oid, digest) VALUES ('checkpoint', 'orders'::regclass, repeat('0', 64))`),
		"row-level security")
	// Nor turn its skip row into one.
	mrWantDenied(t, "UPDATE of a control row as the maintenance role",
		mrTx(t, maintDSN, `UPDATE pgaudit_cdc.control SET action = 'backfill'`), "permission denied")

	// An application role can neither skip nor write a control row.
	mrWantDenied(t, "pgaudit_cdc.skip as an application role",
		mrTx(t, appDSN, `SELECT pgaudit_cdc.skip('bulk')`, `UPDATE orders SET total = 0`), "permission denied", "skip")
	mrWantDenied(t, "INSERT into pgaudit_cdc.control as an application role",
		mrTx(t, appDSN, `INSERT INTO pgaudit_cdc.control (action, reason) VALUES ('skip', 'x')`), "permission denied")

	var rows int
	queryRow(t, adminDSN, `SELECT count(*) FROM pgaudit_cdc.control`, &rows)
	if rows != 1 {
		t.Errorf("pgaudit_cdc.control holds %d rows, want only the maintenance role's skip", rows)
	}
}

// TestDoctorWarnsOfRecreatedWatchedTable: a watched table dropped and created
// again under its name is a new table, not audited until watched; doctor
// says so (a warning, not a failure) until it is watched.
func TestDoctorWarnsOfRecreatedWatchedTable(t *testing.T) {
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": ""}
	exec(t, dsn, `CREATE TABLE journal (id int PRIMARY KEY, v text)`)
	mustRun(t, env, "watch", "journal", "--kind", "other", "--source", "books")

	const check = "re-created table"
	rs, _ := doctorJSON(t, dsn)
	wantCheck(t, "while watched", rs, check, "")

	exec(t, dsn, `DROP TABLE journal`)
	var dropped bool
	queryRow(t, dsn, `SELECT dropped_at IS NOT NULL AND NOT active FROM pgaudit_cdc.watches WHERE table_name = 'journal'`, &dropped)
	if !dropped {
		t.Fatalf("the watch of the dropped table is not marked dropped")
	}
	rs, _ = doctorJSON(t, dsn)
	wantCheck(t, "after the drop", rs, check, "")

	exec(t, dsn, `CREATE TABLE journal (id int PRIMARY KEY, v text)`)
	rs, code := doctorJSON(t, dsn)
	wantCheck(t, "after the re-create", rs, check, preflight.Warn,
		"public.journal was dropped while watched", "not audited", "pgaudit-cdc watch public.journal")
	if code != 0 {
		var failed []string
		for _, r := range rs {
			if r.Status == preflight.Fail {
				failed = append(failed, r.Name+": "+r.Detail)
			}
		}
		t.Errorf("doctor exit %d with a re-created table, want 0 (a warning); failed checks: %v", code, failed)
	}
	human, _, _ := run(t, env, "doctor")
	if !strings.Contains(human, "WARN  re-created table: public.journal was dropped while watched") {
		t.Errorf("doctor's text output lacks the warning:\n%s", human)
	}

	// Watched again (the new table): nothing to warn of.
	mustRun(t, env, "watch", "journal", "--kind", "other", "--source", "books")
	rs, _ = doctorJSON(t, dsn)
	wantCheck(t, "after watching the new table", rs, check, "")
}

// TestDoctorFailsOnUnfollowedSwap: without the DDL event trigger, a table
// that takes the name a watch was made for is not audited until the agent's
// housekeeping follows it; doctor fails meanwhile, naming it, and `list`
// shows the watch under the table's new name.
func TestDoctorFailsOnUnfollowedSwap(t *testing.T) {
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": ""}
	exec(t, dsn, `CREATE TABLE accounts (id int PRIMARY KEY, v text)`)
	mustRun(t, env, "watch", "accounts", "--kind", "other", "--source", "books")
	exec(t, dsn, `DROP EVENT TRIGGER IF EXISTS `+watches.EventTriggerName)
	exec(t, dsn, `ALTER TABLE accounts RENAME TO accounts_old`)
	exec(t, dsn, `CREATE TABLE accounts (id int PRIMARY KEY, v text)`)

	rs, code := doctorJSON(t, dsn)
	wantCheck(t, "after the swap", rs, "watched names", preflight.Fail,
		"public.accounts holds the name watched public.accounts_old was watched as", "not audited", "pgaudit-cdc watch public.accounts")
	if code == 0 {
		t.Errorf("doctor exit 0 with an unaudited swapped-in table")
	}
	// The agent's housekeeping does what the trigger would have.
	exec(t, dsn, `SELECT pgaudit_cdc.sync_watch_names()`)
	rs, _ = doctorJSON(t, dsn)
	wantCheck(t, "after the housekeeping", rs, "watched names", "")
	out := mustRun(t, env, "list")
	if !strings.Contains(out, "public.accounts ") || !strings.Contains(out, "public.accounts_old ") {
		t.Errorf("list after the swap lacks one of the tables:\n%s", out)
	}
}
