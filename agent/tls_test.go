package agent_test

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// The replication stream over the transports whose socket layer differs
// (replication.meteredConn): TLS over TCP, where 64 KiB reads and the waits
// on the low-water mark sit below crypto/tls, and a Unix-domain socket,
// where the reader sleeps to gather and reads through net.Conn. Plain TCP
// is what every other test uses.

// TestStreamOverTLS: sslmode=verify-full, and the walsender says TLS.
func TestStreamOverTLS(t *testing.T) {
	pgtest.Needed(t)
	if embedded.ExternalOverride() {
		t.Fatalf("needs a throwaway cluster with TLS: unset PGAUDIT_TEST_DATABASE_URL")
	}
	ctx := context.Background()
	c, err := embedded.StartLocalTLS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	createAudited(t, c)
	u, err := url.Parse(c.DatabaseURL("audited"))
	if err != nil {
		t.Fatal(err)
	}
	u.RawQuery = url.Values{"sslmode": {"verify-full"}, "sslrootcert": {c.TLSRootCert()}}.Encode()
	streamWorkload(t, u.String(), `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
		WHERE r.application_name = 'pgaudit-cdc'`, "the agent's replication connection does not use TLS")
}

// TestStreamOverUnixSocket: host is the socket directory, and the
// walsender has no client address.
func TestStreamOverUnixSocket(t *testing.T) {
	c, _ := ownCluster(t)
	u, err := url.Parse(c.DatabaseURL("audited"))
	if err != nil {
		t.Fatal(err)
	}
	u.Host = ""
	u.RawQuery = url.Values{"host": {c.SocketDir()}, "port": {strconv.Itoa(c.Port())}, "sslmode": {"disable"}}.Encode()
	streamWorkload(t, u.String(), `SELECT client_addr IS NULL FROM pg_stat_replication
		WHERE application_name = 'pgaudit-cdc'`, "the agent's replication connection is not on the Unix-domain socket")
}

// createAudited creates the database "audited" in c.
func createAudited(t *testing.T, c *embedded.Cluster) {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, c.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE audited"); err != nil {
		t.Fatal(err)
	}
}

// streamWorkload runs an agent on dsn, checks with transportSQL (one
// boolean about the agent's walsender) that the stream uses the transport,
// and sends it thousands of small transactions from concurrent writers,
// which make the reader gather, and a row larger than one read (and than
// one TLS record). Every change arrives exactly once, whole, and the chain
// verifies.
func streamWorkload(t *testing.T, dsn, transportSQL, wrongTransport string) {
	t.Helper()
	ctx := context.Background()
	h := newHarnessOn(t, dsn)
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()

	var ok bool
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := h.conn.QueryRow(ctx, transportSQL).Scan(&ok)
		if err == nil {
			break
		}
		if err != pgx.ErrNoRows || time.Now().After(deadline) {
			t.Fatalf("looking for the agent's walsender: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !ok {
		t.Fatal(wrongTransport)
	}

	const writers, perWriter = 4, 1500
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			for i := range perWriter {
				id := 1 + w*perWriter + i
				if _, err := conn.Exec(ctx, `INSERT INTO t1 VALUES ($1, $2)`, id, fmt.Sprintf("row %d", id)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	const big = 3 << 20
	h.exec(`INSERT INTO t1 SELECT 0, string_agg(md5(g::text), '') FROM generate_series(1, $1 / 32) g`, big)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}

	const want = writers*perWriter + 1
	h.waitEvents(want, 2*time.Minute)
	evs := h.expectExactly(want, 300*time.Millisecond)
	seen := map[int]bool{}
	for _, e := range evs {
		id, err := strconv.Atoi(fmt.Sprint(field(t, e, "new", "id")))
		if err != nil {
			t.Fatalf("event %d has no new.id: %s", e.EventID, publish.Truncate(jsonOf(t, e.Payload), 300))
		}
		if seen[id] {
			t.Fatalf("row %d arrived twice", id)
		}
		seen[id] = true
		v, _ := field(t, e, "new", "v").(string)
		switch {
		case id == 0 && len(v) != big:
			t.Errorf("the big row arrived with %d bytes, want %d", len(v), big)
		case id != 0 && v != fmt.Sprintf("row %d", id):
			t.Errorf("row %d arrived as %q", id, v)
		}
	}
	if len(seen) != want {
		t.Fatalf("%d distinct rows arrived, want %d", len(seen), want)
	}
}
