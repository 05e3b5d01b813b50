package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
)

// startAgent runs `pgaudit-cdc run` in the background until the returned
// function stops it.
func startAgent(t *testing.T, env map[string]string) (stop func()) {
	t.Helper()
	stop, _ = startAgentLog(t, env)
	return stop
}

// startAgentLog is startAgent, also giving the agent's log.
func startAgentLog(t *testing.T, env map[string]string) (stop func(), log *syncBuffer) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--status-interval", "100ms"})
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v\n%s", err, errOut.String())
		}
	}
	t.Cleanup(stop)
	return stop, &errOut
}

// lastChunks counts the CHECKPOINT events that close a checkpoint.
func lastChunks(spine *spinetest.Server) int {
	n := 0
	for _, e := range spine.Events() {
		if cp, ok := e.Payload["checkpoint"].(map[string]any); ok && e.Payload["operation"] == "CHECKPOINT" && cp["last"] == true {
			n++
		}
	}
	return n
}

// waitMarker inserts a row into marker and waits until its event is in
// the spine: everything committed before it was delivered.
func waitMarker(t *testing.T, dsn string, spine *spinetest.Server, id int) {
	t.Helper()
	exec(t, dsn, `INSERT INTO marker VALUES ($1)`, id)
	waitFor(t, "the marker event", 30*time.Second, func() bool {
		for _, e := range spine.Events() {
			if n, ok := e.Payload["new"].(map[string]any); ok && e.Payload["table"] == "public.marker" && fmt.Sprint(n["id"]) == fmt.Sprint(id) {
				return true
			}
		}
		return false
	})
}

// TestCheckpointChunkedVerifiesUnderWrites: a checkpoint read in chunks of
// 7 rows while the table is written to, between its chunks and
// concurrently, verifies clean; so does one of a table without a primary
// key (one chunk, said so).
func TestCheckpointChunkedVerifiesUnderWrites(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL()}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text)`)
	exec(t, dsn, `CREATE TABLE nokey (a int, b text)`)
	exec(t, dsn, `CREATE TABLE marker (id int PRIMARY KEY)`)
	for _, tbl := range []string{"ledger", "nokey", "marker"} {
		mustRun(t, env, "watch", tbl, "--kind", "other", "--source", "books")
	}
	stopAgent := startAgent(t, env)
	exec(t, dsn, `INSERT INTO ledger SELECT g, g * 2.5, 'n' || g FROM generate_series(1, 50) g`)
	exec(t, dsn, `INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, null)`)

	// A writer that runs throughout: updates, deletes and inserts, each
	// its own transaction.
	ctx := context.Background()
	writerCtx, stopWriter := context.WithCancel(ctx)
	var wg sync.WaitGroup
	writerErr := make(chan error, 1)
	var writes int
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			writerErr <- err
			return
		}
		defer conn.Close(ctx)
		for i := 0; writerCtx.Err() == nil; i++ {
			var err error
			switch i % 4 {
			case 0:
				_, err = conn.Exec(ctx, `UPDATE ledger SET amount = amount + 1, note = 'w' || $1::text WHERE id = $2`, fmt.Sprint(i), 1+i*7%50)
			case 1:
				_, err = conn.Exec(ctx, `INSERT INTO ledger VALUES ($1, 0, 'inserted')`, 100+i)
			case 2:
				_, err = conn.Exec(ctx, `DELETE FROM ledger WHERE id = $1`, 100+i-1-4)
			case 3:
				_, err = conn.Exec(ctx, `UPDATE nokey SET b = $1::text WHERE a = 2`, fmt.Sprint(i))
			}
			if err != nil {
				writerErr <- err
				return
			}
			writes++
			time.Sleep(time.Millisecond)
		}
	}()

	// Through the library, with writes between the chunks on both sides of
	// the checkpoint's position: keys already read and keys still ahead.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT 'ledger'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	between := []string{
		`UPDATE ledger SET note = 'behind' WHERE id = 3`,
		`UPDATE ledger SET note = 'ahead' WHERE id = 40`,
		`DELETE FROM ledger WHERE id = 45`,
		`DELETE FROM ledger WHERE id = 2`,
		`INSERT INTO ledger VALUES (0, 1, 'behind, new')`,
		`INSERT INTO ledger VALUES (49999, 1, 'ahead, new')`,
	}
	calls := 0
	res, err := backfill.Checkpoint(ctx, conn, oid, backfill.CheckpointOptions{ChunkRows: 7, OnRows: func(int64) {
		if calls < len(between) {
			exec(t, dsn, between[calls])
		}
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks < 8 || strings.Join(res.KeyColumns, ",") != "id" {
		t.Fatalf("checkpoint: got %d chunks, key %v; want at least 8 chunks of 7 rows, key id", res.Chunks, res.KeyColumns)
	}
	// Through the CLI, with the writer running.
	got := mustRun(t, env, "checkpoint", "ledger", "--chunk-rows", "7")
	if !strings.Contains(got, "chunks") {
		t.Fatalf("checkpoint printed %q", got)
	}
	got = mustRun(t, env, "checkpoint", "nokey", "--chunk-rows", "1")
	if !strings.Contains(got, "in 1 chunks") || !strings.Contains(got, "has no primary key") {
		t.Fatalf("checkpoint of a table without a primary key printed %q, want one chunk and the reason", got)
	}
	stopWriter()
	wg.Wait()
	select {
	case err := <-writerErr:
		t.Fatalf("writer: %v", err)
	default:
	}
	waitFor(t, "3 complete checkpoints", 30*time.Second, func() bool { return lastChunks(spine) == 3 })
	waitMarker(t, dsn, spine, 1)
	stopAgent()

	// The first checkpoint's chunks are interleaved with row events.
	var chunks, interleaved int
	var open bool
	for _, e := range spine.Events() {
		cp, _ := e.Payload["checkpoint"].(map[string]any)
		switch {
		case cp != nil && fmt.Sprint(cp["id"]) == fmt.Sprint(res.ID):
			chunks++
			open = cp["last"] != true
		case open && e.Payload["table"] == "public.ledger":
			interleaved++
		}
	}
	if chunks != int(res.Chunks) || interleaved < len(between) {
		t.Fatalf("checkpoint %d: got %d chunk events with %d row events between them; want %d chunks and at least %d",
			res.ID, chunks, interleaved, res.Chunks, len(between))
	}
	t.Logf("%d concurrent writes; checkpoint %d: %d chunks, %d row events between them", writes, res.ID, chunks, interleaved)

	out, _, err := run(t, env, "verify")
	if err != nil || !strings.Contains(out, "PASS  faithfulness: 3 checkpoints match") {
		t.Fatalf("verify of a clean trail: %v\n%s", err, out)
	}
}

// TestCheckpointNamesBypassedKeys: rows changed while auditing was
// bypassed (the table unwatched) are named by verify, key by key: a changed
// row, a deleted one, one inserted with a key the trail never saw, and one
// inserted with a key the trail had deleted. A session with
// session_replication_role = replica is no bypass: its changes are decoded.
func TestCheckpointNamesBypassedKeys(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL()}
	exec(t, dsn, `CREATE TABLE acct (id int PRIMARY KEY, owner text)`)
	mustRun(t, env, "watch", "acct", "--kind", "other", "--source", "bank")
	stopAgent := startAgent(t, env)
	exec(t, dsn, `INSERT INTO acct SELECT g, 'o' || g FROM generate_series(1, 30) g`)
	exec(t, dsn, `DELETE FROM acct WHERE id = 20`)
	mustRun(t, env, "checkpoint", "acct", "--chunk-rows", "7") // clean

	// Triggers off, decoding on: not a bypass.
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{`SET session_replication_role = replica`, `UPDATE acct SET owner = 'srr' WHERE id = 7`, `RESET session_replication_role`} {
		if _, err := conn.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	// The bypass: changes while the table is not watched.
	mustRun(t, env, "unwatch", "acct")
	exec(t, dsn, `UPDATE acct SET owner = 'hidden' WHERE id = 5`)
	exec(t, dsn, `DELETE FROM acct WHERE id = 12`)
	exec(t, dsn, `INSERT INTO acct VALUES (1000, 'never seen')`)
	exec(t, dsn, `INSERT INTO acct VALUES (20, 'back from the dead')`)
	mustRun(t, env, "watch", "acct", "--kind", "other", "--source", "bank")
	mustRun(t, env, "checkpoint", "acct", "--chunk-rows", "7")
	waitFor(t, "2 complete checkpoints", 30*time.Second, func() bool { return lastChunks(spine) == 2 })
	stopAgent()

	neverSeen := fmt.Sprintf("%012x", verify.KeyHash([]byte(`{"id":1000}`)))
	out, _, err := run(t, env, "verify")
	if code := exitCode(err); code != 1 {
		t.Fatalf("verify: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{
		`{"id":5}: the table's row differs from the trail's (chunk 1)`,
		`{"id":12}: in the trail, not in the table (deleted without an event)`,
		`{"id":20}: in the table, but deleted in the trail (chunk 3)`,
		"a row with key hash " + neverSeen + " the trail never saw, in chunk 5",
		"keys that differ (4)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify does not say %q:\n%s", want, out)
		}
	}
	t.Logf("verify:\n%s", out)
	if strings.Contains(out, `{"id":7}`) {
		t.Errorf("verify names id 7, changed under session_replication_role = replica (decoded, so not a bypass):\n%s", out)
	}

	out, _, err = run(t, env, "verify", "--json")
	if code := exitCode(err); code != 1 {
		t.Fatalf("verify --json: exit %d, want 1\n%s", code, out)
	}
	var rep verify.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, f := range rep.Failures {
		if f.Check != verify.CheckFaithfulness {
			continue
		}
		if f.KeysTotal != len(f.Keys) {
			t.Errorf("keys_total %d, %d keys listed", f.KeysTotal, len(f.Keys))
		}
		for _, k := range f.Keys {
			var b bytes.Buffer
			if err := json.Compact(&b, k.Key); err != nil {
				t.Fatal(err)
			}
			name := b.String()
			if name == "null" {
				name = k.KeyHash
			}
			got[name] = k.Problem
		}
	}
	want := map[string]string{`{"id":5}`: verify.ProblemRowDiffers, `{"id":12}`: verify.ProblemNotInTable,
		`{"id":20}`: verify.ProblemDeletedInTrail, neverSeen: verify.ProblemNeverInTrail}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("verify --json keys: got %v, want %v", got, want)
	}
}

// TestCheckpointChunkRowsRange: --chunk-rows out of range is a usage error,
// said before anything is read. The bound (100,000 rows, a CHECKPOINT event
// of about 1.6 MB) is the checkpoint's own: backfill --chunk-size keeps
// its 1,000,000.
func TestCheckpointChunkRowsRange(t *testing.T) {
	for _, v := range []string{"0", "-3", "100001", "1000000"} {
		_, errOut, err := run(t, map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/x"}, "checkpoint", "t", "--chunk-rows", v)
		if code := exitCode(err); code != 2 || !strings.Contains(err.Error()+errOut, "invalid --chunk-rows "+v+": use 1 to 100000 rows") {
			t.Errorf("--chunk-rows %s: exit %d (%v), want 2 naming the range", v, code, err)
		}
	}
	for _, args := range [][]string{{"checkpoint", "t", "--chunk-rows", "100000"}, {"backfill", "t", "--chunk-size", "1000000"}} {
		_, _, err := run(t, map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/x"}, args...)
		if code := exitCode(err); code == 2 || strings.Contains(fmt.Sprint(err), "invalid --chunk") {
			t.Errorf("%v: exit %d (%v), want it accepted (then failing to connect)", args, code, err)
		}
	}
}
