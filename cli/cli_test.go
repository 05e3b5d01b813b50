package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/testkey"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// TestMain runs the tests against a throwaway PostgreSQL, with a throwaway
// signing key in PGAUDIT_SIGNING_KEY_FILE for every run and demo.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgaudit-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keyFile, err := testkey.Write(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("PGAUDIT_SIGNING_KEY_FILE", keyFile)
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for a command running in a goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// run executes the CLI in-process and returns stdout, stderr and the error.
func run(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errOut syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func mustRun(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, env, args...)
	if err != nil {
		t.Fatalf("pgaudit-cdc %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func exec(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func exitCode(err error) int { return ExitCode(err) }

func TestWatchListUnwatch(t *testing.T) {
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn}
	exec(t, dsn, `CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int primary key); CREATE TABLE decisions (id int)`)

	if got := mustRun(t, env, "watch", "decisions", "--kind", "decision_card_status_changed", "--source", "procurement-api"); got != "public.decisions\n" {
		t.Fatalf("watch printed %q, want public.decisions", got)
	}
	if got := mustRun(t, env, "watch", "Billing.Invoices", "--kind", "other", "--source", "billing"); got != "billing.invoices\n" {
		t.Fatalf("watch printed %q, want billing.invoices", got)
	}
	mustRun(t, env, "watch", "decisions", "--kind", "other", "--source", "procurement-api-v2") // in place
	list := mustRun(t, env, "list")
	for _, want := range []string{"billing.invoices", "public.decisions", "procurement-api-v2"} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %q:\n%s", want, list)
		}
	}
	if strings.Count(list, "public.decisions") != 1 {
		t.Errorf("re-watch duplicated the entry:\n%s", list)
	}
	if got := mustRun(t, env, "unwatch", "decisions"); !strings.HasPrefix(got, "unwatched public.decisions") {
		t.Errorf("unwatch printed %q", got)
	}
	if got := mustRun(t, env, "unwatch", "decisions"); !strings.Contains(got, "was not watched") {
		t.Errorf("second unwatch printed %q, want 'was not watched'", got)
	}
	if list := mustRun(t, env, "list"); strings.Contains(list, "public.decisions") {
		t.Errorf("list still shows the unwatched table:\n%s", list)
	}
}

func TestUserErrorsSayWhatToDo(t *testing.T) {
	dsn := pgtest.DSN(t)
	env := map[string]string{"DATABASE_URL": dsn}
	exec(t, dsn, `CREATE TABLE t (id int); CREATE VIEW v AS SELECT 1 AS x`)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown kind", []string{"watch", "t", "--kind", "bogus", "--source", "s"}, 2, "use one of: decision_card_drafted"},
		{"missing table", []string{"watch", "nope", "--kind", "other", "--source", "s"}, 1, "does not exist"},
		{"backfill of a missing table", []string{"backfill", "nope"}, 1, "table public.nope does not exist: check its name"},
		{"a view", []string{"watch", "v", "--kind", "other", "--source", "s"}, 1, "only tables"},
		{"empty source", []string{"watch", "t", "--kind", "other", "--source", " "}, 2, "--source"},
		{"bad slot", []string{"list", "--slot", "Bad Slot"}, 2, "invalid slot name"},
		{"bad name", []string{"watch", `"unterminated`, "--kind", "other", "--source", "s"}, 2, "unterminated"},
		{"unknown flag", []string{"list", "--nope"}, 2, "unknown flag"},
		{"setup without --print-sql", []string{"setup"}, 2, "--print-sql"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, env, tt.args...)
			if got := exitCode(err); got != tt.code || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Fatalf("got exit %d %v, want exit %d containing %q", got, err, tt.code, tt.want)
			}
		})
	}
	t.Run("no database", func(t *testing.T) {
		t.Setenv("DATABASE_URL", "")
		_, _, err := run(t, nil, "list")
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "DATABASE_URL") {
			t.Fatalf("got %v, want exit 2 naming DATABASE_URL", err)
		}
	})
}

func TestKindFromSpineOpenAPI(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t, "custom_kind", "other")
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL()}
	exec(t, dsn, `CREATE TABLE t (id int)`)
	mustRun(t, env, "watch", "t", "--kind", "custom_kind", "--source", "s")
	_, _, err := run(t, env, "watch", "t", "--kind", "decision_card_drafted", "--source", "s")
	if err == nil || !strings.Contains(err.Error(), "custom_kind, other") {
		t.Fatalf("got %v, want a refusal listing the spine's kinds", err)
	}
}

// freeAddr returns a loopback address with a free port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue finds one sample line's value in Prometheus text output.
func metricValue(body, prefix string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunAsLeastPrivilegeRole runs the SQL of `setup --print-sql`, then
// watch, run and status as that role (not a superuser), and checks that the
// metrics move and readiness follows the spine.
func TestRunAsLeastPrivilegeRole(t *testing.T) {
	adminDSN := pgtest.DSN(t)
	u, _ := url.Parse(adminDSN)
	db := strings.TrimPrefix(u.Path, "/")
	role, owner := "pgaudit_"+db[len(db)-6:], "owner_"+db[len(db)-6:]
	exec(t, adminDSN, fmt.Sprintf(`CREATE ROLE %s NOLOGIN`, owner))
	t.Cleanup(func() {
		exec(t, pgtest.AdminDSN(t), fmt.Sprintf(`DROP OWNED BY %s CASCADE`, owner))
	})
	exec(t, adminDSN, `CREATE TABLE decisions (id int PRIMARY KEY, status text)`)
	exec(t, adminDSN, fmt.Sprintf(`ALTER TABLE decisions OWNER TO %s`, owner))
	exec(t, adminDSN, strings.Replace(SetupSQL(role, db, owner, ""), "'change-me'", "'x'", 1))
	u.User = url.User(role)
	dsn := u.String()

	spine := spinetest.Start(t)
	addr := freeAddr(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL(), "METRICS_ADDR": addr}
	mustRun(t, env, "watch", "decisions", "--kind", "other", "--source", "lp")

	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--status-interval", "100ms", "--log-format", "json"})
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	exec(t, dsn, `INSERT INTO decisions VALUES (1, 'a'), (2, 'b')`)
	// The watch's own self-audit event, then the two inserts.
	waitFor(t, "three events in the spine", 30*time.Second, func() bool { return len(changes(spine)) == 3 })

	base := "http://" + addr
	waitFor(t, "the delivered counter", 10*time.Second, func() bool {
		_, body := get(t, base+"/metrics")
		v, ok := metricValue(body, `pgaudit_cdc_events_delivered_total{kind="other",operation="INSERT",table="public.decisions"}`)
		return ok && v == 2
	})
	_, body := get(t, base+"/metrics")
	for _, family := range []string{"pgaudit_cdc_publish_duration_seconds_bucket", "pgaudit_cdc_commit_to_accepted_seconds_count",
		"pgaudit_cdc_confirmed_lsn", "pgaudit_cdc_build_info", "go_goroutines", "process_resident_memory_bytes",
		"pgaudit_cdc_database_connected 1", "pgaudit_cdc_spine_up 1", "pgaudit_cdc_slot_active 1"} {
		if !strings.Contains(body, family) {
			t.Errorf("/metrics lacks %q", family)
		}
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz: got %d, want 200", code)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz: got %d, want 200", code)
	}
	// The spine goes away: readiness flips once a request fails, retries count.
	spine.SetDown(true)
	exec(t, dsn, `INSERT INTO decisions VALUES (3, 'c')`)
	waitFor(t, "/readyz to answer 503", 10*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 503 })
	_, body = get(t, base+"/metrics")
	// The POST of the new row, or the read-back of what was delivered
	// that comes before a seal, whichever the publisher was at.
	conn, okC := metricValue(body, `pgaudit_cdc_publish_retries_total{reason="connection"}`)
	rb, okR := metricValue(body, `pgaudit_cdc_publish_retries_total{reason="read_back"}`)
	if (!okC || conn < 1) && (!okR || rb < 1) {
		t.Errorf("retries by reason did not move: connection %v %v, read_back %v %v", conn, okC, rb, okR)
	}
	spine.SetDown(false)
	waitFor(t, "the third insert", 30*time.Second, func() bool { return len(changes(spine)) == 4 })
	waitFor(t, "/readyz to recover", 10*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })

	// Every gauge has a value and the ones that must move did.
	_, body = get(t, base+"/metrics")
	for _, g := range []string{"pgaudit_cdc_confirmed_lsn", "pgaudit_cdc_last_delivered_commit_timestamp_seconds", "pgaudit_cdc_slot_retained_wal_bytes"} {
		if v, ok := metricValue(body, g+" "); !ok || v <= 0 {
			t.Errorf("%s: got %v (%v), want > 0", g, v, ok)
		}
	}
	if _, ok := metricValue(body, "pgaudit_cdc_replication_lag_bytes "); !ok {
		t.Errorf("pgaudit_cdc_replication_lag_bytes missing")
	}
	// A refusal becomes a dead letter, counted.
	spine.SetKinds("decision_card_drafted")
	exec(t, dsn, `INSERT INTO decisions VALUES (4, 'refused')`)
	waitFor(t, "the dead-letter counter", 20*time.Second, func() bool {
		_, body := get(t, base+"/metrics")
		v, ok := metricValue(body, `pgaudit_cdc_dead_letters_total{table="public.decisions"}`)
		return ok && v == 1
	})
	spine.SetKinds(spinetest.DefaultKinds...)

	// The refused event is a dead letter, and so is a SEAL event written
	// while the spine refused kind other, if one was.
	statusOut := mustRun(t, env, "status", "--json")
	var st Status
	if err := json.Unmarshal([]byte(statusOut), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, statusOut)
	}
	if !st.Slot.Exists || !st.Slot.AgentConnected || len(st.Watches) != 1 || st.Watches[0].Table != "public.decisions" || !st.Publication.Exists || st.DeadLetters < 1 || st.DeadLetters > 2 {
		t.Errorf("status: got %+v", st)
	}
	human := mustRun(t, env, "status")
	for _, want := range []string{"agent connected", "confirmed LSN", "retained WAL", "public.decisions"} {
		if !strings.Contains(human, want) {
			t.Errorf("status lacks %q:\n%s", want, human)
		}
	}
	doctor, _, err := run(t, env, "doctor")
	if err != nil {
		t.Errorf("doctor failed as the least-privilege role: %v\n%s", err, doctor)
	}
	if strings.Contains(errOut.String(), `"password"`) || strings.Contains(errOut.String(), ":x@") {
		t.Errorf("logs contain a password")
	}
}

func TestDoctorNamesFixes(t *testing.T) {
	adminDSN := pgtest.DSN(t)
	u, _ := url.Parse(adminDSN)
	db := strings.TrimPrefix(u.Path, "/")
	role := "norepl_" + db[len(db)-6:]
	exec(t, adminDSN, fmt.Sprintf(`CREATE ROLE %s LOGIN`, role))
	t.Cleanup(func() { exec(t, pgtest.AdminDSN(t), fmt.Sprintf(`DROP OWNED BY %s CASCADE; DROP ROLE %s`, role, role)) })
	u.User = url.User(role)
	spine := spinetest.Start(t)
	spine.SetDown(true)
	out, _, err := run(t, map[string]string{"DATABASE_URL": u.String(), "AUDIT_STREAM_URL": spine.URL()}, "doctor")
	if exitCode(err) != 1 {
		t.Fatalf("got exit %d, want 1", exitCode(err))
	}
	for _, want := range []string{"FAIL  REPLICATION privilege", `ALTER ROLE "` + role + `" REPLICATION`, "rds_replication",
		"FAIL  pgaudit_cdc schema", "GRANT CREATE ON DATABASE", "FAIL  spine", "ok    wal_level"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}
	jsonOut, _, _ := run(t, map[string]string{"DATABASE_URL": u.String()}, "doctor", "--json")
	var rs []map[string]any
	if err := json.Unmarshal([]byte(jsonOut), &rs); err != nil || len(rs) == 0 {
		t.Fatalf("doctor --json: %v\n%s", err, jsonOut)
	}
}

func TestVersion(t *testing.T) {
	out := mustRun(t, nil, "version")
	if !strings.HasPrefix(out, "pgaudit-cdc ") || !strings.Contains(out, "go1") {
		t.Fatalf("version printed %q", out)
	}
	out = mustRun(t, nil, "--version")
	if !strings.Contains(out, "pgaudit-cdc version") {
		t.Fatalf("--version printed %q", out)
	}
}

func TestEveryCommandHasAnExample(t *testing.T) {
	root := NewRootCmd()
	stack := root.Commands()
	for len(stack) > 0 {
		c := stack[0]
		stack = append(stack[1:], c.Commands()...)
		if c.Name() == "help" || c.Name() == "completion" || c.Parent().Name() == "completion" {
			continue
		}
		if c.Example == "" {
			t.Errorf("command %q has no example in --help", c.CommandPath())
		}
	}
}

func TestReadinessFollowsTheDatabase(t *testing.T) {
	cluster := pgtest.Current(t)
	if cluster.External() {
		t.Log("external server: cannot stop it; readiness on database loss not checked")
		return
	}
	dsn := pgtest.DSN(t)
	exec(t, dsn, `CREATE TABLE r (id int PRIMARY KEY)`)
	spine := spinetest.Start(t)
	addr := freeAddr(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL(), "METRICS_ADDR": addr}
	mustRun(t, env, "watch", "r", "--kind", "other", "--source", "ready")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--status-interval", "100ms", "--log-format", "json"})
	var out, errOut syncBuffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	base := "http://" + addr
	waitFor(t, "ready", 20*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	if err := cluster.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "not ready while PostgreSQL is down", 20*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 503 })
	_, body := get(t, base+"/metrics")
	if v, ok := metricValue(body, "pgaudit_cdc_database_connected"); !ok || v != 0 {
		t.Errorf("pgaudit_cdc_database_connected: got %v, want 0", v)
	}
	if err := cluster.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ready again", 60*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	exec(t, dsn, `INSERT INTO r VALUES (1)`)
	waitFor(t, "the insert after the restart", 30*time.Second, func() bool { return len(changes(spine)) == 2 })
}

func TestDemoPrintsTheChanges(t *testing.T) {
	dsn := pgtest.DSN(t)
	out, errOut, err := run(t, nil, "demo", "--database-url", dsn, "--log-format", "json")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, errOut)
	}
	var ops []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			Payload struct {
				Operation string `json:"operation"`
			} `json:"payload"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("demo printed a line that is not JSON: %q", line)
		}
		ops = append(ops, ev.Payload.Operation)
	}
	// The throwaway key's KEY event comes first, and the changes are sealed
	// (SEAL events between them, as time decides).
	if len(ops) == 0 || ops[0] != "KEY" || !slices.Contains(ops, "SEAL") {
		t.Fatalf("demo printed %s, want the KEY event first and a SEAL", ops)
	}
	ops = slices.DeleteFunc(ops, func(op string) bool { return op == "KEY" || op == "SEAL" })
	if got := strings.Join(ops, " "); got != "WATCH INSERT INSERT UPDATE DELETE TRUNCATE" {
		t.Fatalf("demo printed %s, want the watch and the five changes", got)
	}
}

// changes returns the spine's events but the trail's own (KEY, SEAL).
func changes(s *spinetest.Server) []spinetest.Event {
	var out []spinetest.Event
	for _, e := range s.Events() {
		if meta, _ := e.Payload["metadata"].(map[string]any); !trail.IsTrailKey(fmt.Sprint(meta["idempotency_key"])) {
			out = append(out, e)
		}
	}
	return out
}
