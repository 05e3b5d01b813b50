package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
)

// envDatabaseURL names the environment variable that, when set, points the
// tests at an existing server (a superuser postgres:// URL) instead of a
// throwaway cluster.
const envDatabaseURL = "PGAUDIT_TEST_DATABASE_URL"

// current is the cluster set up by Run; nil before Run or if it failed.
var current *embedded.Cluster

// Run is called from TestMain: it starts the cluster (or uses the server
// named by PGAUDIT_TEST_DATABASE_URL), runs m, stops the cluster and returns
// the exit code. If no server can be had it prints one line on stderr and
// returns 1 without running any test.
//
// With -short (make test-unit, the fast loop) it starts nothing and runs
// only the tests that need no PostgreSQL: one that asks for the cluster
// (Current, DSN, AdminDSN) is left out there, and runs in the whole suite
// (make test-full), whose tests run without -short.
func Run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	c, err := setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		return 1
	}
	current = c
	if v, _ := c.Version(); v != "" {
		fmt.Fprintf(os.Stderr, "pgtest: PostgreSQL %s from %s\n", v, c.BinDir())
	}
	defer func() {
		current = nil
		c.Shutdown()
	}()
	return m.Run()
}

// setup returns the cluster to use for this test binary.
func setup() (*embedded.Cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if raw := os.Getenv(envDatabaseURL); raw != "" {
		c, err := embedded.NewExternal(raw)
		if err != nil {
			return nil, err
		}
		conn, err := pgx.Connect(ctx, c.AdminURL())
		if err != nil {
			return nil, fmt.Errorf("%s: cannot connect: %w", envDatabaseURL, err)
		}
		_ = conn.Close(ctx)
		return c, nil
	}
	return embedded.StartLocal(ctx)
}

// Needed marks t as a test that needs PostgreSQL (the shared cluster, or
// one it starts itself): the fast loop (-short) leaves it out, and the
// whole suite (make test-full) runs it. A benchmark that needs it fails
// under -short instead (test-full runs benchmarks so). Nothing is skipped
// because PostgreSQL is missing.
func Needed(t testing.TB) {
	t.Helper()
	if _, bench := t.(*testing.B); bench && testing.Short() {
		// make test-full runs every benchmark with -short, to see that it
		// still runs: one left out there would go unnoticed.
		t.Fatal("a benchmark needs PostgreSQL: benchmarks run with -short in make test-full; keep PostgreSQL out of them")
	}
	if testing.Short() {
		t.Skip("needs PostgreSQL, which the fast loop (-short) does not start: make test-full runs it")
	}
}

// Current returns the running cluster, for tests that must stop or restart
// it. It fails the test if Run did not set up a cluster.
func Current(t testing.TB) *embedded.Cluster {
	t.Helper()
	Needed(t)
	if current == nil {
		t.Fatalf("pgtest: no PostgreSQL cluster: call pgtest.Run from TestMain")
	}
	return current
}

// ServerVersionNum returns the server's server_version_num (160014 for
// 16.14), read from the server itself, so it holds for an external server
// too. Tests use it for what differs by version: they check the behaviour
// of each version, never skip.
func ServerVersionNum(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, AdminDSN(t))
	if err != nil {
		t.Fatalf("pgtest: connect to admin database: %v", err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		t.Fatalf("pgtest: server_version_num: %v", err)
	}
	return v
}

// AdminDSN returns the URL of the cluster's maintenance database (postgres)
// as superuser. It fails the test if there is no cluster.
func AdminDSN(t testing.TB) string {
	t.Helper()
	return Current(t).AdminURL()
}

// DSN creates a new, empty database for this test, named from t.Name()
// (sanitised) plus a random suffix, and returns its URL. The URL has a query
// part, so "&replication=database" can be appended. When the test ends, the
// database's backends are terminated, its replication slots dropped
// (terminating the backend of an active slot first) and the database
// dropped. It fails the test, never skips it, if there is no cluster.
func DSN(t testing.TB) string {
	t.Helper()
	c := Current(t)
	name, err := dbName(t.Name())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, c.AdminURL())
	if err != nil {
		t.Fatalf("pgtest: connect to admin database: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, c.AdminURL(), name); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return c.DatabaseURL(name)
}

// dbName turns a test name into a database name: lower case, only
// [a-z0-9_] kept, at most 40 characters, then "_" and 6 random hex digits.
func dbName(testName string) (string, error) {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		}
	}
	base := b.String()
	if len(base) > 40 {
		base = base[:40]
	}
	if base == "" {
		base = "test"
	}
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", err
	}
	return base + "_" + hex.EncodeToString(suffix[:]), nil
}

// dropDatabase terminates the backends of database name, drops its
// replication slots and drops it, retrying while backends or slots are
// still going away.
func dropDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	var lastErr error
	for attempt := 0; attempt < 50; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(lastErr, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		if lastErr = dropOnce(ctx, conn, name); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// dropOnce makes one attempt at dropping database name and its slots.
func dropOnce(ctx context.Context, conn *pgx.Conn, name string) error {
	// Backends connected to the database, including walsenders.
	if _, err := conn.Exec(ctx,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		 WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
		return err
	}
	// Slots of the database; an active slot's backend is terminated first.
	rows, err := conn.Query(ctx,
		`SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1`, name)
	if err != nil {
		return err
	}
	type slot struct {
		name string
		pid  *int32
	}
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var s slot
		err := r.Scan(&s.name, &s.pid)
		return s, err
	})
	if err != nil {
		return err
	}
	for _, s := range slots {
		if s.pid != nil {
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, *s.pid); err != nil {
				return err
			}
		}
	}
	for _, s := range slots {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.name); err != nil {
			return fmt.Errorf("drop replication slot %s: %w", s.name, err)
		}
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	return err
}

// Connect opens a connection to dsn for the rest of the test: it is closed
// when the test ends.
func Connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: connecting: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// StreamEveryLargeTransaction sets logical_decoding_work_mem of the
// database at dsn to its least, 64 kB: walsenders that connect to it from
// then on stream (or spill) every transaction over that.
func StreamEveryLargeTransaction(t testing.TB, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET logical_decoding_work_mem = %L', current_database(), '64kB'); END $$`); err != nil {
		t.Fatalf("pgtest: lowering logical_decoding_work_mem: %v", err)
	}
}

// WakeSlotSync has the standby's slot sync worker (PostgreSQL 17+,
// sync_replication_slots = on) take the primary's slots over now, where it
// would otherwise take up to 45 s; call it in every round of a wait for a
// synced copy:
//   - The worker makes a new copy persistent only once it reached a
//     consistent snapshot, which takes a running-transactions record in
//     the WAL; the primary logs one every 15 s on its own, and
//     pg_log_standby_snapshot logs one at once.
//   - While no slot changes, the worker doubles its nap between cycles up
//     to 30 s; a configuration reload sets its latch and it syncs at once.
func WakeSlotSync(t testing.TB, primary, standby *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := primary.Exec(ctx, `SELECT pg_log_standby_snapshot()`); err != nil {
		t.Fatalf("pgtest: logging a standby snapshot on the primary: %v", err)
	}
	if _, err := standby.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		t.Fatalf("pgtest: waking the slot sync worker: %v", err)
	}
}
