package watches_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// The tests of this package that need PostgreSQL get a throwaway cluster
// (internal/pgtest) and a fresh database each.
func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

const (
	testPub  = "pgaudit_cdc"
	testSlot = "pgaudit_cdc"
)

// db is one fresh database, a connection that keeps the server's notices
// (RAISE WARNING of the event trigger), and a registry on it.
type db struct {
	t    *testing.T
	conn *pgx.Conn
	reg  *watches.Registry

	mu      sync.Mutex
	notices []string
}

func newDB(t *testing.T) *db {
	t.Helper()
	d := &db{t: t}
	cfg, err := pgx.ParseConfig(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.notices = append(d.notices, n.Message)
	}
	d.conn, err = pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	t.Cleanup(func() { d.conn.Close(context.Background()) })
	d.reg = watches.NewRegistry(d.conn, testPub, testSlot)
	return d
}

func (d *db) exec(sql string, args ...any) {
	d.t.Helper()
	if _, err := d.conn.Exec(context.Background(), sql, args...); err != nil {
		d.t.Fatalf("exec %q: %v", sql, err)
	}
}

func (d *db) version() int {
	d.t.Helper()
	var v int
	if err := d.conn.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		d.t.Fatal(err)
	}
	return v
}

// takeNotices returns the notices received since the last call.
func (d *db) takeNotices() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := strings.Join(d.notices, "\n")
	d.notices = nil
	return s
}

func (d *db) mustName(table string) watches.TableName {
	d.t.Helper()
	tn, err := watches.ParseTableName(table)
	if err != nil {
		d.t.Fatal(err)
	}
	return tn
}

// identity returns the table's pg_class.relreplident.
func (d *db) identity(table string) string {
	d.t.Helper()
	var s string
	if err := d.conn.QueryRow(context.Background(), "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", table).Scan(&s); err != nil {
		d.t.Fatal(err)
	}
	return s
}

// member reports whether the table is a member of the publication by itself.
func (d *db) member(table string) bool {
	d.t.Helper()
	var ok bool
	if err := d.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = $2::regclass)`, testPub, table).Scan(&ok); err != nil {
		d.t.Fatal(err)
	}
	return ok
}

// writes runs an INSERT, an UPDATE and a DELETE on a table (id int, a int,
// ...), failing the test when PostgreSQL refuses one.
func (d *db) writes(table string, id int) {
	d.t.Helper()
	d.exec("INSERT INTO "+table+" (id, a) VALUES ($1, 1)", id)
	d.exec("UPDATE "+table+" SET a = a + 1 WHERE id = $1", id)
	d.exec("DELETE FROM "+table+" WHERE id = $1", id)
}

// nothingCreated fails the test when the database holds anything a watch
// creates: a replication slot, a publication, an event trigger, or rows of
// the pgaudit_cdc registry.
func (d *db) nothingCreated(after string) {
	d.t.Helper()
	ctx := context.Background()
	var slots, pubs, triggers int
	if err := d.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
			(SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_event_trigger)`).Scan(&slots, &pubs, &triggers); err != nil {
		d.t.Fatal(err)
	}
	if slots != 0 || pubs != 0 || triggers != 0 {
		d.t.Errorf("after %s: %d replication slot(s), %d publication(s), %d event trigger(s); want none", after, slots, pubs, triggers)
	}
	for _, table := range []string{"pgaudit_cdc.watches", "pgaudit_cdc.schema_watches"} {
		var exists bool
		if err := d.conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil {
			d.t.Fatal(err)
		}
		if !exists {
			continue
		}
		var n int
		if err := d.conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			d.t.Fatal(err)
		}
		if n != 0 {
			d.t.Errorf("after %s: %s holds %d row(s); want none", after, table, n)
		}
	}
}
