package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	chainverify "github.com/pgaudit-cdc/pgaudit-cdc/verify"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/testkey"
)

var agentBin string

// keyFile signs the trail of every agent the tests start (one key: they
// continue one another's trail).
var keyFile string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every fault test needs PostgreSQL: the fast loop builds nothing.
		os.Exit(pgtest.Run(m))
	}
	dir, err := os.MkdirTemp("", "pgaudit-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "pgaudit-cdc")
	build := exec.Command("go", "build", "-o", agentBin, "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the agent:", err)
		os.Exit(1)
	}
	if keyFile, err = testkey.Write(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := pgtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// agentProc is one running agent binary.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	log  strings.Builder
}

func startAgentProc(t *testing.T, dsn, spineURL string, extra ...string) *agentProc {
	t.Helper()
	dest := []string{"--audit-stream-url", spineURL}
	if strings.HasPrefix(spineURL, "nats://") {
		dest = []string{"--nats-url", spineURL}
	}
	return startProc(t, append([]string{"run", "--database-url", dsn, dest[0], dest[1], "--signing-key-file", keyFile,
		"--status-interval", "100ms", "--log-format", "json", "--log-level", "info",
		"--spine-timeout", "5s", "--shutdown-grace", "1s"}, extra...)...)
}

// startProc starts the agent binary with args.
func startProc(t *testing.T, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the agent: %v", err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *agentProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *agentProc) terminate(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Errorf("agent did not stop within 20s of SIGINT")
		p.kill()
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("agent exited with %d after SIGINT, want 0\n%s", code, p.logs())
	}
}

func (p *agentProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// workload commits serial transactions of mixed single- and multi-row
// INSERT/UPDATE/DELETE on table acct and records, per committed transaction,
// the token of every row change: "I:<ver>", "U:<ver>", "D:<old ver>". ver
// comes from a sequence, so tokens are unique.
type workload struct {
	conn   *pgx.Conn
	rng    *rand.Rand
	nextID int
	live   []int
	txns   [][]string // committed transactions' tokens, in commit order
	// bulk, when set, makes multi-row statements touch bulk/2 to 3*bulk/2
	// rows, and adds to each transaction rows inserted under a savepoint
	// that is rolled back (which must never reach the trail): transactions
	// large enough to be streamed while in progress.
	bulk int
	// huge, when set, adds to one transaction in two a row whose note is
	// huge bytes: a message the agent sets aside as it arrives
	// (replication.DivertOver). Its id is negative, out of live: it is
	// never changed again.
	huge  int
	nhuge int
}

func setupWorkload(t *testing.T, dsn string) *workload {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, sql := range []string{
		`CREATE SEQUENCE ver_seq`,
		`CREATE TABLE acct (id int PRIMARY KEY, ver bigint NOT NULL, balance numeric(14,2), note text)`,
		`CREATE TABLE noise (id bigserial PRIMARY KEY, v text)`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	return &workload{conn: conn, rng: rand.New(rand.NewPCG(1, 2)), nextID: 1}
}

// step commits one transaction; it returns the number of row changes.
func (w *workload) step(ctx context.Context) (int, error) {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var tokens []string
	statements := 1 + w.rng.IntN(3)
	var inserted, deleted []int
	for s := 0; s < statements; s++ {
		op := w.rng.IntN(10)
		k := 1
		switch {
		case w.bulk > 0 && w.rng.IntN(3) > 0:
			k = w.bulk/2 + w.rng.IntN(w.bulk)
		case w.rng.IntN(3) == 0:
			k = 2 + w.rng.IntN(8) // multi-row
		}
		var rows pgx.Rows
		var prefix string
		switch {
		case op < 4 || len(w.live) < 20:
			ids := make([]int, k)
			for i := range ids {
				ids[i] = w.nextID
				w.nextID++
			}
			inserted = append(inserted, ids...)
			prefix = "I:"
			rows, err = tx.Query(ctx, `INSERT INTO acct SELECT id, nextval('ver_seq'), id * 1.5, 'n' FROM unnest($1::int[]) id RETURNING ver`, ids)
		case op < 8:
			prefix = "U:"
			rows, err = tx.Query(ctx, `UPDATE acct SET ver = nextval('ver_seq'), balance = balance + 1 WHERE id = ANY($1) RETURNING ver`, w.pick(k))
		default:
			prefix = "D:"
			ids := w.pick(k)
			deleted = append(deleted, ids...)
			rows, err = tx.Query(ctx, `DELETE FROM acct WHERE id = ANY($1) RETURNING ver`, ids)
		}
		if err != nil {
			return 0, err
		}
		vers, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return 0, err
		}
		for _, v := range vers {
			tokens = append(tokens, prefix+strconv.FormatInt(v, 10))
		}
	}
	if w.huge > 0 && w.rng.IntN(2) == 0 {
		w.nhuge++
		var ver int64
		if err := tx.QueryRow(ctx, `INSERT INTO acct VALUES ($1, nextval('ver_seq'), 0, repeat('h', $2)) RETURNING ver`, -1_000_000-w.nhuge, w.huge).Scan(&ver); err != nil {
			return 0, err
		}
		tokens = append(tokens, "I:"+strconv.FormatInt(ver, 10))
	}
	if w.bulk > 0 {
		if _, err := tx.Exec(ctx, `SAVEPOINT s`); err != nil {
			return 0, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO acct SELECT -g, nextval('ver_seq'), 0, 'rolled back' FROM generate_series(1, $1::int) g`, w.bulk); err != nil {
			return 0, err
		}
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT s`); err != nil {
			return 0, err
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO noise (v) VALUES ('x')`); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	w.live = append(w.live, inserted...)
	w.live = removeAll(w.live, deleted)
	w.txns = append(w.txns, tokens)
	return len(tokens), nil
}

// runUntil commits transactions until at least n changes are committed.
func (w *workload) runUntil(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	for w.changes() < n {
		if _, err := w.step(ctx); err != nil {
			t.Fatalf("workload: %v", err)
		}
	}
}

func (w *workload) pick(k int) []int {
	if k > len(w.live) {
		k = len(w.live)
	}
	ids := make([]int, 0, k)
	for _, i := range w.rng.Perm(len(w.live))[:k] {
		ids = append(ids, w.live[i])
	}
	return ids
}

func removeAll(s, del []int) []int {
	gone := map[int]bool{}
	for _, d := range del {
		gone[d] = true
	}
	out := s[:0]
	for _, v := range s {
		if !gone[v] {
			out = append(out, v)
		}
	}
	return out
}

func (w *workload) changes() int {
	n := 0
	for _, tx := range w.txns {
		n += len(tx)
	}
	return n
}

// verify checks the spine against the workload: every change exactly once,
// transactions in commit order, the chain valid. It reports the counts.
// store is where a destination's trail is read back: the spine double, or
// a JetStream stream (jetstream_test.go).
type store interface {
	Events() []spinetest.Event
	Verify() (valid bool, firstBreak int64, reason string)
}

func verify(t *testing.T, w *workload, spine store) {
	t.Helper()
	txOf := map[string]int{}
	for i, tx := range w.txns {
		for _, tok := range tx {
			txOf[tok] = i
		}
	}
	want := len(txOf)
	seen := map[string]int{}
	duplicates, unknown, outOfOrder, late := 0, 0, 0, 0
	lastTx := -1
	selfAudit, trailEvents := 0, 0
	for _, e := range spine.Events() {
		if meta, _ := e.Payload["metadata"].(map[string]any); trail.IsTrailKey(fmt.Sprint(meta["idempotency_key"])) {
			trailEvents++ // the trail's own KEY and SEAL events
			continue
		}
		if e.Source == "pgaudit-cdc" {
			selfAudit++ // the registry's own events (the watch)
			continue
		}
		tok, ok := token(e)
		if !ok {
			unknown++
			continue
		}
		seen[tok]++
		if seen[tok] > 1 {
			duplicates++
		}
		tx, known := txOf[tok]
		if !known {
			unknown++
			continue
		}
		if meta, _ := e.Payload["metadata"].(map[string]any); meta["late"] == true {
			// Re-sent after a later event of its window landed: out of
			// commit order, and marked so.
			late++
			continue
		}
		if tx < lastTx {
			outOfOrder++
		}
		lastTx = tx
	}
	gaps := 0
	var missing []string
	for tok := range txOf {
		if seen[tok] == 0 {
			gaps++
			if len(missing) < 10 {
				missing = append(missing, tok)
			}
		}
	}
	sort.Strings(missing)
	valid, at, reason := spine.Verify()
	t.Logf("changes committed: %d in %d transactions; events in spine: %d (+%d self-audit, +%d KEY and SEAL); duplicates: %d; gaps: %d; unknown: %d; out of order: %d (+%d marked late); chain valid: %v",
		want, len(w.txns), len(spine.Events())-selfAudit-trailEvents, selfAudit, trailEvents, duplicates, gaps, unknown, outOfOrder, late, valid)
	if selfAudit != 1 {
		t.Errorf("got %d self-audit events, want exactly 1 (the watch)", selfAudit)
	}
	if duplicates != 0 || gaps != 0 || unknown != 0 || outOfOrder != 0 {
		t.Errorf("got %d duplicates, %d gaps (e.g. %v), %d unknown, %d out of order; want none", duplicates, gaps, missing, unknown, outOfOrder)
	}
	if !valid {
		t.Errorf("spine chain invalid at %d: %s", at, reason)
	}
	// pgaudit-cdc verify's own checks over the same chain: recomputed
	// hashes, every event linked to its predecessor, commit order.
	v := chainverify.New(chainverify.Options{Slot: "pgaudit_cdc"})
	for _, e := range spine.Events() {
		v.Add(chain.Event{EventID: e.EventID, Timestamp: e.Timestamp, Kind: e.Kind, Source: e.Source,
			Payload: e.Payload, PrevHash: e.PrevHash, Hash: e.Hash})
	}
	if rep := v.Finish(); !rep.OK() {
		t.Errorf("verify fails after the faults: %+v", rep.Failures)
		for _, f := range rep.Failures[:1] {
			for _, e := range spine.Events() {
				m, _ := e.Payload["metadata"].(map[string]any)
				if e.EventID >= f.EventID-3 && e.EventID <= f.EventID+12 {
					t.Logf("#%d %v idx=%v n=%v late=%v prev=%v key=%v", e.EventID, m["commit_lsn"], m["tx_index"], m["tx_events"], m["late"], m["prev"], m["idempotency_key"])
				}
			}
		}
	}
}

func token(e spinetest.Event) (string, bool) {
	op, _ := e.Payload["operation"].(string)
	row := "new"
	if op == "DELETE" {
		row = "old"
	}
	m, _ := e.Payload[row].(map[string]any)
	if m == nil || op == "" {
		return "", false
	}
	return op[:1] + ":" + fmt.Sprint(m["ver"]), true
}

// waitDrained waits until the destination holds n changes (and the
// watch's self-audit event) and a seal after them: a successor of a killed
// agent may find everything delivered and still have to seal it.
func waitDrained(t *testing.T, spine store, n int, within time.Duration, p *agentProc) {
	t.Helper()
	n++ // the self-audit event of the watch
	deadline := time.Now().Add(within)
	for {
		got, sealed := drained(spine.Events())
		if got >= n && sealed {
			break
		}
		if time.Now().After(deadline) {
			logs := ""
			if p != nil {
				logs = p.logs()
				if len(logs) > 4000 {
					logs = logs[len(logs)-4000:]
				}
			}
			t.Fatalf("the destination holds %d changes and self-audit events (sealed to the end: %v) after %s, want %d\nagent log tail:\n%s", got, sealed, within, n, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // anything extra would be a duplicate
}

// drained counts the events that are not the trail's own (KEY, SEAL), and
// says whether a SEAL comes after the last of them.
func drained(evs []spinetest.Event) (n int, sealed bool) {
	for _, e := range evs {
		meta, _ := e.Payload["metadata"].(map[string]any)
		key, _ := meta["idempotency_key"].(string)
		switch {
		case !trail.IsTrailKey(key):
			n++
			sealed = false
		case e.Payload["operation"] == trail.OpSeal:
			sealed = true
		}
	}
	return n, sealed
}

func watch(t *testing.T, dsn string) {
	t.Helper()
	out, err := exec.Command(agentBin, "watch", "acct", "--kind", "other", "--source", "faults", "--database-url", dsn).CombinedOutput()
	if err != nil {
		t.Fatalf("watch: %v\n%s", err, out)
	}
}

// killCycles runs the workload up to rows changes in cycles, each with an
// agent that start gives, killed with kill -9 at a random moment while the
// workload runs; between, when set, runs after each cycle's kill.
//
// sent, when set, counts the POSTs the destination received. A
// successor of a killed agent first waits for the requests its predecessor
// may have left in flight (5 s here), so a kill timed from the start would
// mostly hit that wait: three cycles in four are timed from the agent's
// first request instead, and kill it while it delivers.
func killCycles(t *testing.T, w *workload, cycles, rows int, rng *rand.Rand, sent func() int64, start func() *agentProc, between func(c int)) {
	t.Helper()
	ctx := context.Background()
	for c := 0; c < cycles; c++ {
		var base int64
		if sent != nil {
			// The spine may still be taking POSTs the killed agent
			// sent: count from when they stopped coming.
			for base = sent(); ; {
				time.Sleep(200 * time.Millisecond)
				if now := sent(); now != base {
					base = now
					continue
				}
				break
			}
		}
		p := start()
		target := rows * (c + 1) / cycles
		after := time.Duration(100+rng.IntN(900)) * time.Millisecond
		var killAt time.Time
		if sent == nil || rng.IntN(4) == 0 {
			killAt = time.Now().Add(after)
		}
		deadline := time.Now().Add(time.Minute)
		for w.changes() < target || killAt.IsZero() || time.Now().Before(killAt) {
			if killAt.IsZero() && sent() > base {
				killAt = time.Now().Add(after)
			}
			if killAt.IsZero() && time.Now().After(deadline) {
				t.Fatalf("cycle %d: the agent sent nothing within a minute\n%s", c, p.logs())
			}
			if w.changes() < target {
				if _, err := w.step(ctx); err != nil {
					t.Fatalf("workload: %v", err)
				}
			} else {
				time.Sleep(10 * time.Millisecond)
			}
			if !killAt.IsZero() && time.Now().After(killAt) && p != nil {
				p.kill()
				p = nil
			}
		}
		if p != nil {
			p.kill()
		}
		if between != nil {
			between(c)
		}
	}
}

// shortSettle is for kill cycles whose requests are small: a restart after
// kill -9 waits the settle time, min(--spine-timeout, 5 s), before its
// first read-back, and 2 s keeps cycles short while a request still has
// 2 s to be appended. The huge rows keep 5 s: their POSTs need it.
var shortSettle = []string{"--spine-timeout", "2s"}

func TestKillNineCycles(t *testing.T) {
	cycles := envInt("PGAUDIT_FAULT_CYCLES", 6)
	rows := envInt("PGAUDIT_FAULT_ROWS", 1500)
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	rng := rand.New(rand.NewPCG(3, 4))
	// Each agent killed at a random moment while the workload runs.
	killCycles(t, w, cycles, rows, rng, spine.Requests, func() *agentProc { return startAgentProc(t, dsn, spine.URL(), shortSettle...) }, nil)
	p := startAgentProc(t, dsn, spine.URL(), shortSettle...)
	waitDrained(t, spine, w.changes(), 2*time.Minute, p)
	p.terminate(t)
	verify(t, w, spine)
	t.Logf("kill -9 cycles: %d", cycles)
}

// TestKillNineCyclesStreamed is TestKillNineCycles with transactions the
// server streams while in progress (logical_decoding_work_mem at its
// least, 64 kB) and an agent spill of 64 KiB in memory: killed in the
// middle of a streamed transaction, of its spill, or of its delivery, the
// agent delivers every change once after its restart, and none of a
// rolled-back savepoint's.
func TestKillNineCyclesStreamed(t *testing.T) {
	cycles := envInt("PGAUDIT_FAULT_CYCLES", 6)
	rows := 4 * envInt("PGAUDIT_FAULT_ROWS", 1500)
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	w.bulk = 200
	pgtest.StreamEveryLargeTransaction(t, dsn)
	watch(t, dsn)
	spill := append([]string{"--spill-dir", t.TempDir(), "--spill-memory", "64KiB"}, shortSettle...)
	rng := rand.New(rand.NewPCG(5, 6))
	killCycles(t, w, cycles, rows, rng, spine.Requests, func() *agentProc { return startAgentProc(t, dsn, spine.URL(), spill...) }, nil)
	p := startAgentProc(t, dsn, spine.URL(), spill...)
	waitDrained(t, spine, w.changes(), 2*time.Minute, p)
	p.terminate(t)
	verify(t, w, spine)
	var streamed int64
	if err := w.conn.QueryRow(context.Background(), `SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'pgaudit_cdc'`).Scan(&streamed); err != nil {
		t.Fatal(err)
	}
	if streamed == 0 {
		t.Fatalf("the server streamed no transaction: the test did not test streaming")
	}
	t.Logf("kill -9 cycles: %d, %d transactions, %d changes; the server streamed %d transactions", cycles, len(w.txns), w.changes(), streamed)
}

// TestKillNineCyclesHugeRows is TestKillNineCycles with a 17 MiB row in
// one transaction in two, each a message the agent sets aside in its
// spill directory as it arrives and decodes from there: killed while one
// is arriving, decoded or delivered, the agent delivers every change once
// after its restart.
func TestKillNineCyclesHugeRows(t *testing.T) {
	cycles := max(envInt("PGAUDIT_FAULT_CYCLES", 6)/2, 3)
	rows := max(envInt("PGAUDIT_FAULT_ROWS", 1500)/10, 100)
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	w.huge = 17 << 20
	watch(t, dsn)
	rng := rand.New(rand.NewPCG(7, 8))
	spill := []string{"--spill-dir", t.TempDir()}
	killCycles(t, w, cycles, rows, rng, spine.Requests, func() *agentProc { return startAgentProc(t, dsn, spine.URL(), spill...) }, nil)
	p := startAgentProc(t, dsn, spine.URL(), spill...)
	waitDrained(t, spine, w.changes(), 2*time.Minute, p)
	p.terminate(t)
	verify(t, w, spine)
	if w.nhuge == 0 {
		t.Fatal("no huge row was written: the test did not test them")
	}
	t.Logf("kill -9 cycles: %d, %d transactions, %d changes, %d huge rows", cycles, len(w.txns), w.changes(), w.nhuge)
}

// TestKilledWhileTheSpineAppends kills the agent while the spine holds its
// requests and appends them 2 s later, as an ASGI server finishes a
// handler whose client left. The audited database says the killed session
// never recorded its end, so its successor's read-backs wait for
// --spine-timeout (5 s here): they find those events, and none is sent
// twice.
func TestKilledWhileTheSpineAppends(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	p := startAgentProc(t, dsn, spine.URL())
	w.runUntil(ctx, t, 30)
	waitDrained(t, spine, w.changes(), time.Minute, p)

	landed := killWhileTheSpineAppends(t, spine, 2*time.Second, func() *agentProc {
		w.runUntil(ctx, t, w.changes()+1)
		return p
	})
	p = startAgentProc(t, dsn, spine.URL())
	waitDrained(t, spine, w.changes(), time.Minute, p)
	time.Sleep(time.Until(landed)) // the held requests landed
	p.terminate(t)
	if !strings.Contains(p.logs(), "read-backs wait for the requests it may have left in flight") {
		t.Errorf("the successor did not say it waits for its predecessor's requests\n%s", p.logs())
	}
	verify(t, w, spine)
}

// killWhileTheSpineAppends holds the spine's next POST for stall
// (FaultSlow: appended after its client left, as an ASGI server finishes a
// request whose client went away), calls send, which makes a process send
// it, and kills that process with kill -9 once the spine holds the request.
// It returns when the held request has surely landed.
func killWhileTheSpineAppends(t *testing.T, spine *spinetest.Server, stall time.Duration, send func() *agentProc) (landed time.Time) {
	t.Helper()
	spine.SetStall(stall)
	held := spine.Faults()[spinetest.FaultSlow]
	spine.FailNext(1, spinetest.FaultSlow)
	p := send()
	deadline := time.Now().Add(30 * time.Second)
	for spine.Faults()[spinetest.FaultSlow] == held {
		if time.Now().After(deadline) {
			t.Fatalf("nothing was sent within 30 s\n%s", p.logs())
		}
		time.Sleep(5 * time.Millisecond)
	}
	landed = time.Now().Add(stall + time.Second)
	time.Sleep(100 * time.Millisecond) // its body is read
	p.kill()
	return landed
}

func TestSpineFaultsAndPostgresRestart(t *testing.T) {
	rows := envInt("PGAUDIT_FAULT_ROWS", 1500)
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	spine.SetStall(300 * time.Millisecond)
	spine.SetRandomFaults(0.15, 42, spinetest.Fault503, spinetest.Fault500, spinetest.FaultDropBefore,
		spinetest.FaultDropAfter, spinetest.FaultStall)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	ctx := context.Background()
	p := startAgentProc(t, dsn, spine.URL(), strings.Fields(os.Getenv("PGAUDIT_FAULT_AGENT_ARGS"))...)
	restarted := false
	for w.changes() < rows {
		if _, err := w.step(ctx); err != nil {
			t.Fatalf("workload: %v", err)
		}
		if !restarted && w.changes() > rows/2 {
			cluster := pgtest.Current(t)
			if cluster.External() {
				t.Log("external server: PostgreSQL restart part not run")
			} else {
				if err := cluster.Restart(ctx); err != nil {
					p.mu.Lock()
					logText := p.log.String()
					p.mu.Unlock()
					_ = os.WriteFile(filepath.Join(os.TempDir(), "pgaudit-faults-agent.log"), []byte(logText), 0o644)
					if len(logText) > 6000 {
						logText = logText[len(logText)-6000:]
					}
					t.Fatalf("restarting PostgreSQL: %v\nthe agent's log, last lines:\n%s", err, logText)
				}
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				w.conn.Close(ctx)
				w.conn = conn
			}
			restarted = true
		}
	}
	waitDrained(t, spine, w.changes(), 3*time.Minute, p)
	spine.SetRandomFaults(0, 0)
	p.terminate(t)
	faults := spine.Faults()
	t.Logf("faults injected: %v", faults)
	t.Cleanup(func() {
		if t.Failed() {
			// The agent's whole log, for the failure's story.
			path := filepath.Join(os.TempDir(), fmt.Sprintf("pgaudit-faults-agent-%d.log", time.Now().UnixNano()))
			if err := os.WriteFile(path, []byte(p.logs()), 0o644); err == nil {
				t.Logf("the agent's log: %s", path)
			}
		}
	})
	verify(t, w, spine)
	if faults[spinetest.FaultDropAfter] == 0 {
		t.Errorf("no drop-after-append fault was injected; the test proves nothing about ambiguous failures")
	}
}

func TestStandbyTakesOver(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	ctx := context.Background()
	first := startAgentProc(t, dsn, spine.URL())
	w.runUntil(ctx, t, 200)
	waitDrained(t, spine, w.changes(), time.Minute, first)
	second := startAgentProc(t, dsn, spine.URL())
	time.Sleep(1500 * time.Millisecond)
	if !strings.Contains(second.logs(), "waiting as standby") {
		t.Fatalf("second instance did not report standby; log:\n%s", second.logs())
	}
	w.runUntil(ctx, t, 400)
	first.kill()
	w.runUntil(ctx, t, 600)
	waitDrained(t, spine, w.changes(), time.Minute, second)
	second.terminate(t)
	verify(t, w, spine)
}

func TestDeadLetterRoundTrip(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	ctx := context.Background()
	p := startAgentProc(t, dsn, spine.URL())
	w.runUntil(ctx, t, 20)
	waitDrained(t, spine, w.changes(), time.Minute, p)
	before := w.changes()
	// The spine stops accepting our kind: events are refused, kept, and the
	// stream moves on.
	spine.SetKinds("decision_card_drafted")
	w.runUntil(ctx, t, before+15)
	refused := w.changes() - before
	deadline := time.Now().Add(time.Minute)
	for countDeadLetters(t, dsn) < refused {
		if time.Now().After(deadline) {
			t.Fatalf("got %d dead letters, want %d\n%s", countDeadLetters(t, dsn), refused, p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := exec.Command(agentBin, "dead-letters", "list", "--json", "--database-url", dsn).Output()
	if err != nil {
		t.Fatalf("dead-letters list: %v", err)
	}
	var listed []map[string]any
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatalf("dead-letters list: %v", err)
	}
	// A SEAL event written while the spine refused kind other is a dead
	// letter too: only the changes are counted.
	listed = slices.DeleteFunc(listed, func(l map[string]any) bool { return trail.IsTrailKey(fmt.Sprint(l["idempotency_key"])) })
	if len(listed) != refused {
		t.Fatalf("dead-letters list: got %d changes, want %d", len(listed), refused)
	}
	spine.SetKinds(spinetest.DefaultKinds...)
	p.terminate(t) // the retries alone send to the spine from here
	retryArgs := []string{"dead-letters", "retry", "--all", "--database-url", dsn, "--audit-stream-url", spine.URL()}
	retry := func() string {
		out, err := exec.Command(agentBin, retryArgs...).CombinedOutput()
		if err != nil {
			t.Fatalf("dead-letters retry: %v\n%s", err, out)
		}
		return string(out)
	}
	// A retry killed while the spine still appends the letter it sent (an
	// ASGI server finishes a request whose client left): the next retry
	// finds that letter in the spine instead of sending it again.
	landed := killWhileTheSpineAppends(t, spine, 2*time.Second, func() *agentProc { return startProc(t, retryArgs...) })
	if out := retry(); !strings.Contains(out, "was cut off while sending it") {
		t.Errorf("the retry after a killed one did not say it waits for the letter in flight\n%s", out)
	}
	time.Sleep(time.Until(landed)) // the held request landed
	retry()                        // nothing left: no duplicate
	if n := countDeadLetters(t, dsn); n != 0 {
		t.Fatalf("got %d dead letters after retry, want 0", n)
	}
	// Retried events sit out of commit order in the chain (documented), so
	// check exactly-once without the order check.
	seen := map[string]int{}
	for _, e := range spine.Events() {
		if tok, ok := token(e); ok {
			seen[tok]++
		}
	}
	for _, tx := range w.txns {
		for _, tok := range tx {
			if seen[tok] != 1 {
				t.Errorf("change %s appears %d times in the spine, want 1", tok, seen[tok])
			}
		}
	}
	if valid, at, reason := spine.Verify(); !valid {
		t.Errorf("chain invalid at %d: %s", at, reason)
	}
	t.Logf("dead letters: %d refused, all retried once; spine events %d", refused, len(spine.Events()))
}

func countDeadLetters(t *testing.T, dsn string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	// Changes only: a refused SEAL event is a dead letter too.
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pgaudit_cdc.dead_letters
		WHERE idempotency_key NOT LIKE 'pgaudit-cdc-%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIdleSlotDoesNotPinWAL(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	ctx := context.Background()
	p := startAgentProc(t, dsn, spine.URL())
	if _, err := w.step(ctx); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, spine, w.changes(), time.Minute, p)
	// Busy unwatched table, idle watched one.
	for i := 0; i < 20; i++ {
		if _, err := w.conn.Exec(ctx, `INSERT INTO noise (v) SELECT repeat('x', 200) FROM generate_series(1, 2000)`); err != nil {
			t.Fatal(err)
		}
	}
	var lag int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := w.conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'pgaudit_cdc'`).Scan(&lag); err != nil {
			t.Fatal(err)
		}
		if lag < 64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed_flush_lsn is %d bytes behind the WAL after 30s of idle watched tables; want it to follow the server", lag)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("retained WAL behind confirmed_flush_lsn with busy unwatched tables: %d bytes", lag)
	p.terminate(t)
}
