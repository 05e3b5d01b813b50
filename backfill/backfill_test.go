package backfill_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

const pub, slot = "pgaudit_cdc", "pgaudit_cdc"

var table = watches.TableName{Schema: "public", Name: "b"}

// watched creates public.b with 50 rows, watches it (which creates the
// publication and the slot) and returns a connection, the DSN and its OID.
func watched(t *testing.T) (*pgx.Conn, string, uint32) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	if _, err := conn.Exec(ctx, `CREATE TABLE b (id int PRIMARY KEY, v text);
		INSERT INTO b SELECT g, 'row ' || g FROM generate_series(1, 50) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, table, "other", "backfill-test"); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT 'b'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return conn, dsn, oid
}

// chunksInWAL counts the backfill messages the slot holds (without
// consuming them).
func chunksInWAL(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	// Decoding stops at the flushed WAL: with synchronous_commit off (test
	// clusters) a commit that writes WAL and flushes it is needed first.
	if _, err := conn.Exec(context.Background(), `BEGIN; SET LOCAL synchronous_commit = on;
		SELECT pg_logical_emit_message(true, 'pgaudit_cdc_test.flush', ''); COMMIT`); err != nil {
		t.Fatal(err)
	}
	var n int
	err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
			'proto_version', '1', 'publication_names', $2, 'messages', 'true')
		WHERE get_byte(data, 0) = ascii('M') AND position(convert_to($3, 'UTF8') IN data) > 0`,
		slot, pub, decode.BackfillPrefix).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type backfillRow struct {
	chunks   int64
	finished bool
}

func backfillState(t *testing.T, conn *pgx.Conn, id int64) backfillRow {
	t.Helper()
	var r backfillRow
	if err := conn.QueryRow(context.Background(), `SELECT chunks_done, finished_at IS NOT NULL FROM pgaudit_cdc.backfills WHERE id = $1`,
		id).Scan(&r.chunks, &r.finished); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBackfillStopsWhenUnwatched unwatches the table between two chunks: the
// backfill must stop with ErrUnwatched before writing another chunk, stay
// resumable, and resume after a new watch without resending a chunk.
func TestBackfillStopsWhenUnwatched(t *testing.T) {
	ctx := context.Background()
	conn, dsn, oid := watched(t)
	other := pgtest.Connect(t, dsn)
	var unwatchErr error
	p, err := backfill.Run(ctx, conn, oid, backfill.Options{ChunkSize: 10, OnChunk: func(p backfill.Progress) {
		if p.Chunks == 2 {
			_, unwatchErr = watches.NewRegistry(other, pub, slot).Unwatch(ctx, table)
		}
	}})
	if unwatchErr != nil {
		t.Fatalf("unwatch: %v", unwatchErr)
	}
	if !errors.Is(err, backfill.ErrUnwatched) {
		t.Fatalf("got %v, want ErrUnwatched", err)
	}
	for _, want := range []string{"stopped after chunk 2 (20 rows sent)", "unwatched during the backfill", "watch the table again"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if p.Chunks != 2 || p.Rows != 20 || p.Done {
		t.Errorf("progress %+v, want 2 chunks, 20 rows, not done", p)
	}
	if got := chunksInWAL(t, conn); got != 2 {
		t.Errorf("%d backfill chunks in the WAL, want 2 (none after the unwatch)", got)
	}
	if st := backfillState(t, conn, p.ID); st.chunks != 2 || st.finished {
		t.Errorf("backfill row %+v, want 2 chunks done and unfinished (resumable)", st)
	}

	// While unwatched, a run refuses at once.
	if _, err := backfill.Run(ctx, conn, oid, backfill.Options{ChunkSize: 10}); err == nil || !strings.Contains(err.Error(), "not watched") {
		t.Fatalf("backfill of the unwatched table: got %v, want a refusal", err)
	}
	// Watched again, it resumes after chunk 2.
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, table, "other", "backfill-test"); err != nil {
		t.Fatal(err)
	}
	p2, err := backfill.Run(ctx, conn, oid, backfill.Options{ChunkSize: 10})
	if err != nil {
		t.Fatalf("resumed backfill: %v", err)
	}
	if !p2.Resumed || !p2.Done || p2.ID != p.ID || p2.Rows != 50 {
		t.Errorf("resumed progress %+v, want backfill %d resumed and done with 50 rows", p2, p.ID)
	}
	if got := chunksInWAL(t, conn); got != 6 {
		t.Errorf("%d backfill chunks in the WAL, want 6 (50 rows in chunks of 10, none twice, and the empty last one)", got)
	}
}

// TestBackfillWaitsForAConcurrentUnwatch holds an unwatch open (registry
// lock taken, watch row updated, not committed) when the next chunk starts:
// the chunk must wait for it, then see the table unwatched and stop.
func TestBackfillWaitsForAConcurrentUnwatch(t *testing.T) {
	ctx := context.Background()
	conn, dsn, oid := watched(t)
	other := pgtest.Connect(t, dsn)
	const hold = 500 * time.Millisecond
	committed := make(chan error, 1)
	var holdErr error
	start := time.Now()
	p, err := backfill.Run(ctx, conn, oid, backfill.Options{ChunkSize: 10, OnChunk: func(p backfill.Progress) {
		if p.Chunks != 1 {
			return
		}
		tx, err := other.Begin(ctx)
		if err == nil {
			_, err = tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(watches.RegistryLockKey))
		}
		if err == nil {
			_, err = tx.Exec(ctx, "UPDATE pgaudit_cdc.watches SET active = false WHERE table_oid = $1", oid)
		}
		if err != nil {
			holdErr = err
			return
		}
		start = time.Now()
		go func() {
			time.Sleep(hold)
			committed <- tx.Commit(ctx)
		}()
	}})
	if holdErr != nil {
		t.Fatalf("holding an unwatch open: %v", holdErr)
	}
	if cerr := <-committed; cerr != nil {
		t.Fatalf("committing the unwatch: %v", cerr)
	}
	if !errors.Is(err, backfill.ErrUnwatched) || !strings.Contains(err.Error(), "after chunk 1") {
		t.Fatalf("got %v, want ErrUnwatched after chunk 1", err)
	}
	if waited := time.Since(start); waited < hold {
		t.Errorf("the chunk returned after %s, before the unwatch committed (%s)", waited, hold)
	}
	if p.Chunks != 1 {
		t.Errorf("progress %+v, want 1 chunk", p)
	}
	if got := chunksInWAL(t, conn); got != 1 {
		t.Errorf("%d backfill chunks in the WAL, want 1", got)
	}
}
