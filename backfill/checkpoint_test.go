package backfill_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// checkpointMessages reads the checkpoint messages the slot holds, without
// consuming them.
func checkpointMessages(t *testing.T, conn *pgx.Conn) []decode.CheckpointMessage {
	t.Helper()
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `BEGIN; SET LOCAL synchronous_commit = on;
		SELECT pg_logical_emit_message(true, 'pgaudit_cdc_test.flush', ''); COMMIT`); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT substring(data FROM position(convert_to($3, 'UTF8') IN data) + length($3) + 1 + 4)
		FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2, 'messages', 'true')
		WHERE get_byte(data, 0) = ascii('M') AND position(convert_to($3, 'UTF8') IN data) > 0`, slot, pub, decode.CheckpointPrefix)
	if err != nil {
		t.Fatal(err)
	}
	contents, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	var out []decode.CheckpointMessage
	for _, c := range contents {
		var m decode.CheckpointMessage
		if err := json.Unmarshal(c, &m); err != nil {
			t.Fatalf("a checkpoint message: %v: %q", err, c)
		}
		out = append(out, m)
	}
	return out
}

// TestCheckpointChunksByKey: a table with a hostile name and a composite
// key of hostile columns is read in chunks in key order: every row once,
// the chunks' digests add up to the one-chunk digest, each chunk lists its
// rows' key and row hashes, and only the last carries the totals.
func TestCheckpointChunksByKey(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	if _, err := conn.Exec(ctx, `CREATE TABLE "odd "";name" ("k ""1" text, "k;2" int, v numeric, PRIMARY KEY ("k ""1", "k;2"));
		INSERT INTO "odd "";name" SELECT 'k' || (g % 5), g, g * 1.5 FROM generate_series(1, 53) g`); err != nil {
		t.Fatal(err)
	}
	name := watches.TableName{Schema: "public", Name: `odd ";name`}
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, name, "other", "checkpoint-test"); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT '"odd "";name"'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	whole, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{ChunkRows: 7})
	if err != nil {
		t.Fatal(err)
	}
	if whole.Chunks != 1 || res.Chunks != 8 || res.Rows != 53 || res.Digest != whole.Digest || fmt.Sprint(res.KeyColumns) != `[k "1 k;2]` {
		t.Fatalf("got %d chunks (%d rows, digest %s, key %q), want 8 chunks of the %d rows of one chunk (digest %s)",
			res.Chunks, res.Rows, res.Digest, res.KeyColumns, whole.Rows, whole.Digest)
	}
	msgs := checkpointMessages(t, conn)
	if len(msgs) != 9 {
		t.Fatalf("got %d checkpoint messages in the WAL, want 1 + 8", len(msgs))
	}
	seen := map[uint64]bool{}
	var total verify.Digest
	for i, m := range msgs[1:] {
		if m.ID != res.ID || m.Chunk != int64(i+1) || m.Last != (i == 7) || m.Pairs == nil {
			t.Fatalf("chunk %d: got id %d, chunk %d, last %v, pairs %v", i+1, m.ID, m.Chunk, m.Last, m.Pairs != nil)
		}
		pairs, err := verify.DecodePairs(*m.Pairs)
		if err != nil || int64(len(pairs)) != m.Rows {
			t.Fatalf("chunk %d: %d pairs for %d rows (%v)", m.Chunk, len(pairs), m.Rows, err)
		}
		for _, p := range pairs {
			if seen[p.Key] {
				t.Fatalf("chunk %d lists key hash %012x again", m.Chunk, p.Key)
			}
			seen[p.Key] = true
		}
		if err := total.AddDigest(m.Rows, m.Digest); err != nil {
			t.Fatal(err)
		}
		if m.Last != (m.TotalRows != nil) {
			t.Fatalf("chunk %d (last %v) has totals %v", m.Chunk, m.Last, m.TotalRows)
		}
	}
	last := msgs[len(msgs)-1]
	if len(seen) != 53 || *last.TotalRows != 53 || last.TotalDigest != total.Hex() || total.Hex() != whole.Digest {
		t.Fatalf("got %d keys, totals %d %s; want 53 keys and the chunks' sum %s", len(seen), *last.TotalRows, last.TotalDigest, total.Hex())
	}
	k, _ := verify.KeyJSON(map[string]any{`k "1`: "k1", "k;2": json.Number("1"), "v": "x"}, res.KeyColumns)
	if !seen[verify.KeyHash(k)] {
		t.Fatalf("the key %s is not listed", k)
	}
}

// TestCheckpointWithoutKeyIsOneChunk: a table without a primary key is read
// in one chunk with no per-key list.
func TestCheckpointWithoutKeyIsOneChunk(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	if _, err := conn.Exec(ctx, `CREATE TABLE nk (v text); INSERT INTO nk SELECT 'same' FROM generate_series(1, 20)`); err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, watches.TableName{Schema: "public", Name: "nk"}, "other", "t"); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT 'nk'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	res, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{ChunkRows: 3})
	if err != nil {
		t.Fatal(err)
	}
	msgs := checkpointMessages(t, conn)
	if res.Chunks != 1 || res.Rows != 20 || len(res.KeyColumns) != 0 || len(msgs) != 1 || msgs[0].Pairs != nil || !msgs[0].Last {
		t.Fatalf("got %d chunks of %d rows, key %v, %d messages; want one chunk of 20 rows without pairs", res.Chunks, res.Rows, res.KeyColumns, len(msgs))
	}
}

// TestCheckpointTiming measures a checkpoint of a large table, and how long
// a writer of the table waits meanwhile. It runs only when
// PGAUDIT_CHECKPOINT_ROWS is set (docs/guarantees.md, "Checkpoints", gives
// the figures for 1000000).
func TestCheckpointTiming(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PGAUDIT_CHECKPOINT_ROWS"))
	if n <= 0 {
		t.Skip("set PGAUDIT_CHECKPOINT_ROWS to measure")
	}
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	if _, err := conn.Exec(ctx, `CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric, at timestamptz)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO big SELECT g, 'customer ' || g, g * 1.25, '2026-01-01'::timestamptz + g * interval '1 second'
		FROM generate_series(1, $1) g`, n); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE big`); err != nil {
		t.Fatal(err)
	}
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, watches.TableName{Schema: "public", Name: "big"}, "other", "t"); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT 'big'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{backfill.DefaultChunkRows, n} {
		// A writer updating one row at a time meanwhile: its longest wait.
		wctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var longest time.Duration
		var writes int
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return
			}
			defer w.Close(ctx)
			for i := 0; wctx.Err() == nil; i++ {
				start := time.Now()
				if _, err := w.Exec(ctx, `UPDATE big SET amount = amount + 1 WHERE id = $1`, 1+(i*7919)%n); err != nil {
					return
				}
				longest = max(longest, time.Since(start))
				writes++
				time.Sleep(5 * time.Millisecond)
			}
		}()
		start := time.Now()
		res, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{ChunkRows: chunk})
		wall := time.Since(start)
		stop()
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("checkpoint of %d rows, --chunk-rows %d: %s wall, %d chunks, longest chunk lock %s; a concurrent writer: %d updates, longest wait %s",
			res.Rows, chunk, wall.Round(10*time.Millisecond), res.Chunks, res.LongestLock.Round(time.Millisecond), writes, longest.Round(time.Millisecond))
	}
}

// TestCheckpointStopsOnAlterTable: ALTER TABLE between two chunks (a
// column's type, a new column, another primary key) stops the checkpoint at
// the next chunk, under its lock, with ErrTableChanged; changes of rows
// between chunks do not.
func TestCheckpointStopsOnAlterTable(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	conn := pgtest.Connect(t, dsn)
	other := pgtest.Connect(t, dsn)
	reg := watches.NewRegistry(conn, pub, slot)
	tests := []struct {
		name  string
		alter string // %[1]s: the table, %[2]s: its primary key; run between chunks 1 and 2
		stops bool
	}{
		{name: "a column's type", alter: `ALTER TABLE %[1]s ALTER COLUMN n TYPE bigint`, stops: true},
		{name: "a new column", alter: `ALTER TABLE %[1]s ADD COLUMN extra text DEFAULT 'x'`, stops: true},
		{name: "a dropped column", alter: `ALTER TABLE %[1]s DROP COLUMN v`, stops: true},
		{name: "another primary key", alter: `ALTER TABLE %[1]s DROP CONSTRAINT %[2]s, ADD PRIMARY KEY (id, n)`, stops: true},
		{name: "rows only", alter: `UPDATE %[1]s SET v = 'changed' WHERE id > 10`, stops: false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("alt %d", i)
			ident := pgx.Identifier{name}.Sanitize()
			pkey := pgx.Identifier{name + "_pkey"}.Sanitize()
			if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE %[1]s (id int, n int, v text, CONSTRAINT %[2]s PRIMARY KEY (id));
				INSERT INTO %[1]s SELECT g, g, 'row ' || g FROM generate_series(1, 20) g`, ident, pkey)); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.Watch(ctx, watches.TableName{Schema: "public", Name: name}, "other", "t"); err != nil {
				t.Fatal(err)
			}
			var oid uint32
			if err := conn.QueryRow(ctx, `SELECT $1::regclass::oid`, ident).Scan(&oid); err != nil {
				t.Fatal(err)
			}
			var between []int64
			res, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{ChunkRows: 5, BetweenChunks: func(n int64) {
				between = append(between, n)
				if n == 1 {
					if _, err := other.Exec(ctx, fmt.Sprintf(tc.alter, ident, pkey)); err != nil {
						t.Errorf("between chunks: %v", err)
					}
				}
			}})
			if !tc.stops {
				if err != nil || res.Chunks != 4 || fmt.Sprint(between) != "[1 2 3]" {
					t.Fatalf("got %d chunks, hook after %v, error %v; want 4 chunks, the hook after 1, 2, 3", res.Chunks, between, err)
				}
				return
			}
			if !errors.Is(err, backfill.ErrTableChanged) || !strings.Contains(err.Error(), "stopped after chunk 1") ||
				!strings.Contains(err.Error(), "the table's definition changed during the checkpoint; run it again") {
				t.Fatalf("got %v, want ErrTableChanged at chunk 2", err)
			}
		})
	}
}
