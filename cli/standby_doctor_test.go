package cli

// Issue 12, part 2 (PostgreSQL 17+): doctor checks the whole failover set-up
// against a real primary and streaming standby, piece by piece, and status
// run against the standby says it is one and how far its copy of the slot
// trails what it replayed.

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
)

// doctorJSON runs doctor --json against dsn and returns its checks and exit
// code.
func doctorJSON(t *testing.T, dsn string) ([]preflight.Result, int) {
	t.Helper()
	out, errOut, err := run(t, nil, "doctor", "--json", "--database-url", dsn)
	var rs []preflight.Result
	if jerr := json.Unmarshal([]byte(out), &rs); jerr != nil {
		t.Fatalf("doctor --json: %v (exit %d, %v)\n%s\nstderr: %s", jerr, exitCode(err), err, out, errOut)
	}
	return rs, exitCode(err)
}

// wantCheck checks that the check named name has status want ("" for
// absent) and that its detail and fix hold the given words.
func wantCheck(t *testing.T, where string, rs []preflight.Result, name string, want preflight.Status, words ...string) {
	t.Helper()
	var r *preflight.Result
	for i := range rs {
		if rs[i].Name == name {
			r = &rs[i]
		}
	}
	switch {
	case want == "" && r != nil:
		t.Errorf("%s: check %q: got %s (%s), want none", where, name, r.Status, r.Detail)
	case want == "":
	case r == nil:
		t.Errorf("%s: check %q missing, want %s", where, name, want)
	case r.Status != want:
		t.Errorf("%s: check %q: got %s (%s; fix: %s), want %s", where, name, r.Status, r.Detail, r.Fix, want)
	default:
		for _, w := range words {
			if !strings.Contains(r.Detail+" fix: "+r.Fix, w) {
				t.Errorf("%s: check %q: %q (fix %q) does not mention %q", where, name, r.Detail, r.Fix, w)
			}
		}
	}
}

// sqlOn runs sql on dsn.
func sqlOn(t *testing.T, dsn string, sql ...string) {
	t.Helper()
	for _, q := range sql {
		exec(t, dsn, q)
	}
}

// waitQuery waits until sql (one boolean) is true on dsn.
func waitQuery(t *testing.T, what, dsn, sql string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		conn, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			err = conn.QueryRow(context.Background(), sql).Scan(&ok)
			conn.Close(context.Background())
		}
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last error: %v)", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reloadTo sets name with ALTER SYSTEM on dsn, reloads, and waits until new
// sessions see value.
func reloadTo(t *testing.T, dsn, name, value string) {
	t.Helper()
	sqlOn(t, dsn, fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", name, value), "SELECT pg_reload_conf()")
	waitQuery(t, "reload of "+name, dsn, fmt.Sprintf("SELECT current_setting('%s') = '%s'", name, value), 10*time.Second)
}

func lsnOn(t *testing.T, dsn, sql string) pgoutput.LSN {
	t.Helper()
	var s string
	queryRow(t, dsn, sql, &s)
	l, err := pgoutput.ParseLSN(s)
	if err != nil {
		t.Fatalf("%s: %q: %v", sql, s, err)
	}
	return l
}

// TestDoctorStandbyFailoverSetup builds a primary and a streaming standby
// with every piece of the failover set-up missing, runs doctor against
// both, and fixes the pieces one at a time: each check fails (or warns)
// with its fix before, and is fine after. Then, with the standby's copy of
// the slot synced, status against the standby (text and --json) says it is
// a standby, that the copy is synced, and how far it trails the replayed WAL.
func TestDoctorStandbyFailoverSetup(t *testing.T) {
	pgtest.Needed(t)
	ctx := context.Background()
	primary, err := embedded.StartLocal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(primary.Shutdown)
	if v, major := primary.Version(); major < 17 {
		t.Skipf("PostgreSQL %s (%d) has no failover slots: the standby checks are 17+", v, major)
	}
	t.Setenv("AUDIT_STREAM_URL", "")
	t.Setenv("DATABASE_URL", "")
	pDSN := primary.DatabaseURL("postgres")
	exec(t, pDSN, `CREATE TABLE ledger (id int PRIMARY KEY, v text)`)
	mustRun(t, nil, "watch", "ledger", "--kind", "other", "--source", "books", "--database-url", pDSN)

	rs, _ := doctorJSON(t, pDSN)
	wantCheck(t, "primary alone", rs, "failover slot", preflight.OK, "is a failover slot")
	wantCheck(t, "primary alone", rs, "synchronized_standby_slots", preflight.OK, "no physical standby")
	wantCheck(t, "primary alone", rs, "standby without a slot", "")

	// A standby with every piece missing: no primary_slot_name, no dbname in
	// primary_conninfo, sync_replication_slots and hot_standby_feedback off.
	exec(t, pDSN, `SELECT pg_create_physical_replication_slot('standby1')`)
	noDB := fmt.Sprintf("primary_conninfo=host=127.0.0.1 port=%d user=postgres application_name=doctor_standby", primary.Port())
	standby, err := primary.StartStandby(ctx, noDB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Shutdown)
	sDSN := standby.DatabaseURL("postgres")
	waitQuery(t, "the standby streaming without a slot", pDSN,
		`SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = 'doctor_standby' AND state = 'streaming')`, 60*time.Second)

	rs, _ = doctorJSON(t, pDSN)
	wantCheck(t, "primary, standby without a slot", rs, "synchronized_standby_slots", preflight.Warn, "empty", "synchronized_standby_slots = 'standby1'")
	wantCheck(t, "primary, standby without a slot", rs, "standby without a slot", preflight.Warn, "doctor_standby", "primary_slot_name = 'standby1'")
	rs, code := doctorJSON(t, sDSN)
	if code != 1 {
		t.Errorf("doctor on the incomplete standby: exit %d, want 1", code)
	}
	const where = "standby, nothing set up"
	wantCheck(t, where, rs, "sync_replication_slots", preflight.Fail, "off", "ALTER SYSTEM SET sync_replication_slots = on")
	wantCheck(t, where, rs, "hot_standby_feedback", preflight.Fail, "off", "ALTER SYSTEM SET hot_standby_feedback = on")
	wantCheck(t, where, rs, "primary_slot_name", preflight.Fail, "empty", "ALTER SYSTEM SET primary_slot_name")
	wantCheck(t, where, rs, "primary_conninfo", preflight.Fail, "no dbname", "dbname=")
	wantCheck(t, where, rs, "synced slot", preflight.Warn, "no copy", "GAP")
	wantCheck(t, where, rs, "slot", preflight.OK, "standby")
	wantCheck(t, where, rs, "capture continuity", preflight.OK, "standby")
	for _, r := range rs {
		if strings.Contains(r.Detail+r.Fix, "127.0.0.1") {
			t.Errorf("doctor shows primary_conninfo (it may hold a password): %+v", r)
		}
	}

	doctorText, _, _ := run(t, nil, "doctor", "--database-url", sDSN)
	t.Logf("doctor on the incomplete standby:\n%s", doctorText)

	// status is read-only on a standby: no migration (SQLSTATE 25006).
	out, errOut, err := run(t, nil, "status", "--database-url", sDSN)
	if err != nil {
		t.Fatalf("status on the standby: %v\n%s\nstderr: %s", err, out, errOut)
	}
	t.Logf("status on the standby without a copy:\n%s", out)
	for _, w := range []string{"STANDBY", "read-only", "no copy of the slot", "a GAP", "recorded on the primary", "watches"} {
		if !strings.Contains(out, w) {
			t.Errorf("status on the standby without a copy lacks %q:\n%s", w, out)
		}
	}
	st := statusJSON(t, sDSN)
	if st.Server.Role != "standby" || !st.Slot.OnStandby || st.Standby == nil || st.Standby.Copy != "missing" || st.Standby.Synced || len(st.Watches) != 1 {
		t.Errorf("status --json on the standby without a copy: %+v, standby %+v", st, st.Standby)
	}

	// primary_slot_name: the standby now streams through standby1, which
	// synchronized_standby_slots does not name: a FAIL on the primary.
	reloadTo(t, sDSN, "primary_slot_name", "standby1")
	waitQuery(t, "the standby streaming through standby1", pDSN,
		`SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'`, 60*time.Second)
	rs, _ = doctorJSON(t, sDSN)
	wantCheck(t, "standby with primary_slot_name", rs, "primary_slot_name", preflight.OK, "standby1")
	wantCheck(t, "standby with primary_slot_name", rs, "sync_replication_slots", preflight.Fail)
	rs, code = doctorJSON(t, pDSN)
	if code != 1 {
		t.Errorf("doctor on the primary with an unlisted standby slot: exit %d, want 1", code)
	}
	wantCheck(t, "primary, standby1 not listed", rs, "synchronized_standby_slots", preflight.Fail,
		"standby1", "forked audit trail", "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'; SELECT pg_reload_conf();")
	wantCheck(t, "primary, standby1 not listed", rs, "standby without a slot", "")

	// A list naming another slot still leaves standby1 out.
	exec(t, pDSN, `SELECT pg_create_physical_replication_slot('spare')`)
	reloadTo(t, pDSN, "synchronized_standby_slots", "spare")
	rs, _ = doctorJSON(t, pDSN)
	wantCheck(t, "primary, only spare listed", rs, "synchronized_standby_slots", preflight.Fail,
		"standby1", "ALTER SYSTEM SET synchronized_standby_slots = 'spare,standby1'")
	reloadTo(t, pDSN, "synchronized_standby_slots", "standby1")
	exec(t, pDSN, `SELECT pg_drop_replication_slot('spare')`)
	rs, _ = doctorJSON(t, pDSN)
	wantCheck(t, "primary, standby1 listed", rs, "synchronized_standby_slots", preflight.OK, "standby1")

	// The standby's settings, one at a time.
	reloadTo(t, sDSN, "hot_standby_feedback", "on")
	rs, _ = doctorJSON(t, sDSN)
	wantCheck(t, "standby with hot_standby_feedback", rs, "hot_standby_feedback", preflight.OK)
	wantCheck(t, "standby with hot_standby_feedback", rs, "sync_replication_slots", preflight.Fail)
	reloadTo(t, sDSN, "sync_replication_slots", "on")
	rs, _ = doctorJSON(t, sDSN)
	wantCheck(t, "standby with sync_replication_slots", rs, "sync_replication_slots", preflight.OK)
	wantCheck(t, "standby with sync_replication_slots", rs, "primary_conninfo", preflight.Fail, "no dbname")
	// primary_conninfo is a command-line setting here: restart with dbname.
	if err := standby.RestartWith(ctx, fmt.Sprintf("primary_conninfo=host=127.0.0.1 port=%d user=postgres dbname=postgres application_name=doctor_standby", primary.Port())); err != nil {
		t.Fatal(err)
	}
	rs, _ = doctorJSON(t, sDSN)
	wantCheck(t, "standby with dbname", rs, "primary_conninfo", preflight.OK, `names database "postgres"`)

	// The copy appears once the primary's slot has passed what the standby
	// replayed: run the agent while rows are written.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stdout, stderr syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--database-url", pDSN, "--metrics-addr", "", "--status-interval", "100ms"})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()
	pconn, sconn := pgtest.Connect(t, pDSN), pgtest.Connect(t, sDSN)
	id := 0
	deadline := time.Now().Add(120 * time.Second)
	for {
		id++
		exec(t, pDSN, `INSERT INTO ledger VALUES ($1, 'row')`, id)
		pgtest.WakeSlotSync(t, pconn, sconn)
		var synced bool
		queryRow(t, sDSN, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgaudit_cdc' AND synced AND NOT temporary)`, &synced)
		if synced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby's copy of the slot is not synced within 120s\nagent stderr:\n%s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}

	rs, code = doctorJSON(t, sDSN)
	if code != 0 {
		t.Errorf("doctor on the complete standby: exit %d, want 0: %+v", code, rs)
	}
	for _, name := range []string{"sync_replication_slots", "hot_standby_feedback", "primary_slot_name", "primary_conninfo"} {
		wantCheck(t, "standby complete", rs, name, preflight.OK)
	}
	wantCheck(t, "standby complete", rs, "synced slot", preflight.OK, `slot "pgaudit_cdc" synced`, "behind this standby's replayed WAL")
	rs, code = doctorJSON(t, pDSN)
	if code != 0 {
		t.Errorf("doctor on the complete primary: exit %d, want 0: %+v", code, rs)
	}
	wantCheck(t, "primary complete", rs, "synchronized_standby_slots", preflight.OK, "standby1")
	wantCheck(t, "primary complete", rs, "failover slot", preflight.OK)

	// The agent is stopped: the primary's slot, and so the copy, stay put
	// while more rows are written; the standby replays them, and the copy
	// trails its replayed WAL by at least their WAL.
	before := lsnOn(t, pDSN, `SELECT pg_current_wal_lsn()::text`)
	for i := 0; i < 50; i++ {
		id++
		exec(t, pDSN, `INSERT INTO ledger VALUES ($1, repeat('x', 200))`, id)
	}
	after := lsnOn(t, pDSN, `SELECT pg_current_wal_lsn()::text`)
	waitQuery(t, "the standby replaying the new rows", sDSN, fmt.Sprintf(`SELECT pg_last_wal_replay_lsn() >= '%s'`, after), 60*time.Second)
	var st2 *Status
	for attempt := 0; ; attempt++ {
		copyBefore := lsnOn(t, sDSN, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgaudit_cdc'`)
		replayBefore := lsnOn(t, sDSN, `SELECT pg_last_wal_replay_lsn()::text`)
		st2 = statusJSON(t, sDSN)
		copyAfter := lsnOn(t, sDSN, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgaudit_cdc'`)
		replayAfter := lsnOn(t, sDSN, `SELECT pg_last_wal_replay_lsn()::text`)
		if copyBefore != copyAfter && attempt < 10 {
			time.Sleep(time.Second) // the sync worker moved the copy meanwhile
			continue
		}
		if st2.Standby == nil || st2.Standby.BehindReplayBytes == nil {
			t.Fatalf("status --json on the synced standby: no lag: %+v", st2.Standby)
		}
		sb := st2.Standby
		lag := *sb.BehindReplayBytes
		if st2.Server.Role != "standby" || sb.Copy != "synced" || !sb.Synced || sb.ConfirmedFlushLSN != copyAfter.String() {
			t.Errorf("status --json on the synced standby: server %+v, standby %+v; want synced at %s", st2.Server, *sb, copyAfter)
		}
		replay, err := pgoutput.ParseLSN(sb.ReplayLSN)
		if err != nil || replay < replayBefore || replay > replayAfter {
			t.Errorf("replay_lsn %q, want between %s and %s", sb.ReplayLSN, replayBefore, replayAfter)
		}
		if want := int64(replay) - int64(copyAfter); lag != want {
			t.Errorf("behind_replay_bytes %d, want replay_lsn − confirmed_flush_lsn = %d", lag, want)
		}
		if written := int64(after) - int64(before); lag < written || copyAfter > before {
			t.Errorf("behind_replay_bytes %d; want at least the %d bytes of WAL written after the copy's position %s (before %s)", lag, written, copyAfter, before)
		}
		if st2.Slot.LagBytes == nil || *st2.Slot.LagBytes != lag {
			t.Errorf("slot.lag_bytes %v, want %d on a standby (measured from the replayed WAL)", st2.Slot.LagBytes, lag)
		}
		t.Logf("standby's copy confirmed %s, replayed %s: %d bytes behind", sb.ConfirmedFlushLSN, sb.ReplayLSN, lag)
		break
	}

	out, errOut, err = run(t, nil, "status", "--database-url", sDSN)
	if err != nil {
		t.Fatalf("status on the synced standby: %v\n%s\nstderr: %s", err, out, errOut)
	}
	t.Logf("status on the synced standby:\n%s", out)
	copyLSN := st2.Standby.ConfirmedFlushLSN
	for _, re := range []string{
		`(?m)^server\s+STANDBY \(in recovery, read-only\)`,
		`(?m)^synced\s+yes: a promotion keeps the slot`,
		`(?m)^confirmed LSN\s+` + regexp.QuoteMeta(copyLSN) + ` \(the copy's confirmed_flush_lsn\)`,
		`(?m)^copy lag\s+\d+(\.\d)? (B|kB|MB) behind this standby's replayed WAL \(`,
		`(?m)^capture\s+recorded on the primary`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status on the synced standby does not match %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "agent connected") || strings.Contains(out, "not created yet") {
		t.Errorf("status on the standby reads as a primary's:\n%s", out)
	}
	if st := statusJSON(t, pDSN); st.Server.Role != "primary" || st.Standby != nil || st.Slot.OnStandby {
		t.Errorf("status --json on the primary: server %+v, standby %+v", st.Server, st.Standby)
	}
}

func statusJSON(t *testing.T, dsn string) *Status {
	t.Helper()
	out, errOut, err := run(t, nil, "status", "--json", "--database-url", dsn)
	if err != nil {
		t.Fatalf("status --json: %v\n%s\nstderr: %s", err, out, errOut)
	}
	var st Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return &st
}
