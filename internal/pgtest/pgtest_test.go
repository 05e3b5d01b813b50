package pgtest

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
)

func TestMain(m *testing.M) {
	os.Exit(Run(m))
}

func currentDatabase(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var name string
	if err := conn.QueryRow(context.Background(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatalf("current_database: %v", err)
	}
	return name
}

func TestDBName(t *testing.T) {
	name, err := dbName("TestFoo/Sub-Case#01_" + strings.Repeat("x", 60))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^testfoosubcase01_x{23}_[0-9a-f]{6}$`).MatchString(name) {
		t.Fatalf("dbName = %q", name)
	}
	if name, _ := dbName("/#"); !regexp.MustCompile(`^test_[0-9a-f]{6}$`).MatchString(name) {
		t.Fatalf("dbName of empty = %q", name)
	}
}

func TestDSNConnectable(t *testing.T) {
	t.Parallel()
	dsn := DSN(t)
	if !strings.Contains(dsn, "?") {
		t.Fatalf("DSN %q has no query part", dsn)
	}
	conn := Connect(t, dsn)
	if got := currentDatabase(t, conn); !strings.HasPrefix(got, "testdsnconnectable_") {
		t.Fatalf("current_database() = %q", got)
	}
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("fresh database has %d tables (err %v)", n, err)
	}
}

func TestTwoDSNsDiffer(t *testing.T) {
	t.Parallel()
	a, b := DSN(t), DSN(t)
	if a == b {
		t.Fatalf("same DSN twice: %s", a)
	}
	ca, cb := Connect(t, a), Connect(t, b)
	if _, err := ca.Exec(context.Background(), "CREATE TABLE only_in_a (id int)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("table of database a visible in b: %d (err %v)", n, err)
	}
	if currentDatabase(t, ca) == currentDatabase(t, cb) {
		t.Fatal("both DSNs reach the same database")
	}
}

func TestWalLevelLogical(t *testing.T) {
	t.Parallel()
	conn := Connect(t, DSN(t))
	var level string
	if err := conn.QueryRow(context.Background(), "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %q, want logical", level)
	}
}

func TestAdminDSN(t *testing.T) {
	t.Parallel()
	conn := Connect(t, AdminDSN(t))
	if got := currentDatabase(t, conn); got != "postgres" {
		t.Fatalf("admin database = %q", got)
	}
	var super bool
	if err := conn.QueryRow(context.Background(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil || !super {
		t.Fatalf("admin user is not superuser (err %v)", err)
	}
}

func TestReplicationConnection(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, DSN(t)+"&replication=database")
	if err != nil {
		t.Fatalf("replication connect: %v", err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) < 4 {
		t.Fatalf("IDENTIFY_SYSTEM returned %+v", results)
	}
	if db := string(results[0].Rows[0][3]); !strings.HasPrefix(db, "testreplicationconnection_") {
		t.Fatalf("IDENTIFY_SYSTEM dbname = %q", db)
	}
}

// TestCleanupDropsActiveSlot checks that a database whose logical slot is
// being streamed by a still-open replication connection is dropped, slot
// included, when its test ends.
func TestCleanupDropsActiveSlot(t *testing.T) {
	Current(t) // the inner test's cluster (left out under -short, as the inner test is)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var dbname string
	var repl *pgconn.PgConn
	t.Run("inner", func(t *testing.T) {
		dsn := DSN(t)
		conn := Connect(t, dsn)
		dbname = currentDatabase(t, conn)
		if _, err := conn.Exec(ctx, "CREATE PUBLICATION pub FOR ALL TABLES"); err != nil {
			t.Fatal(err)
		}
		var err error
		repl, err = pgconn.Connect(ctx, dsn+"&replication=database")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := repl.Exec(ctx, "CREATE_REPLICATION_SLOT s1 LOGICAL pgoutput").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if _, err := repl.Exec(ctx, "CREATE_REPLICATION_SLOT s2 LOGICAL pgoutput").ReadAll(); err != nil {
			t.Fatal(err)
		}
		// Start streaming from s1 so that it is active.
		repl.Frontend().Send(&pgproto3.Query{String: `START_REPLICATION SLOT s1 LOGICAL 0/0 (proto_version '1', publication_names 'pub')`})
		if err := repl.Frontend().Flush(); err != nil {
			t.Fatal(err)
		}
		msg, err := repl.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
			t.Fatalf("START_REPLICATION: got %T %+v", msg, msg)
		}
		var active bool
		if err := conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 's1'").Scan(&active); err != nil || !active {
			t.Fatalf("slot s1 not active (err %v)", err)
		}
	})
	if repl != nil {
		defer repl.Close(context.Background())
	}
	if dbname == "" {
		t.Fatal("inner test did not create a database")
	}
	admin := Connect(t, AdminDSN(t))
	var dbs, slots int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", dbname).Scan(&dbs); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", dbname).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if dbs != 0 || slots != 0 {
		t.Fatalf("after cleanup: %d databases, %d slots named for %s", dbs, slots, dbname)
	}
}

func TestRestart(t *testing.T) {
	c := Current(t)
	if c.External() {
		t.Skip("cannot restart an external server")
	}
	if c.BinDir() == "" || c.Port() == 0 {
		t.Fatalf("BinDir %q, Port %d", c.BinDir(), c.Port())
	}
	// The bench compares against pg_recvlogical; the npm packages of the
	// version matrix ship initdb, pg_ctl and postgres only.
	if !strings.HasPrefix(c.BinDir(), embedded.CacheDir()+"/") {
		if _, err := os.Stat(c.BinDir() + "/pg_recvlogical"); err != nil {
			t.Errorf("pg_recvlogical not in BinDir: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dsn := DSN(t)
	before := Connect(t, dsn)
	if _, err := before.Exec(ctx, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}

	if err := c.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if err := before.Ping(ctx); err == nil {
		t.Error("connection from before the restart still works")
	}
	after := Connect(t, dsn)
	var n int
	if err := after.QueryRow(ctx, "SELECT count(*) FROM kept").Scan(&n); err != nil || n != 1 {
		t.Fatalf("after restart: %d rows (err %v)", n, err)
	}

	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if conn, err := pgx.Connect(ctx, dsn); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped cluster")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	again := Connect(t, dsn)
	if err := again.Ping(ctx); err != nil {
		t.Fatalf("after Start: %v", err)
	}
}

// TestRequestedVersionRuns checks that the server is the version
// PGAUDIT_PG_VERSION asks for, so each run of the version matrix tests what
// it says it does.
func TestRequestedVersionRuns(t *testing.T) {
	want, err := embedded.RequestedVersion()
	if err != nil {
		t.Fatal(err)
	}
	got := ServerVersionNum(t)
	t.Logf("server_version_num %d", got)
	if want != 0 && got/10000 != want {
		t.Fatalf("%s=%d but the server is %d", embedded.EnvVersion, want, got)
	}
	if c := Current(t); !c.External() {
		if _, major := c.Version(); major != got/10000 {
			t.Errorf("Cluster.Version reports %d, the server %d", major, got)
		}
	}
}
