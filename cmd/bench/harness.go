package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Options size the benchmark. Zero values are filled in by defaults().
type Options struct {
	Quick  bool
	Rows   int // row changes generated for the drain benchmark
	Rounds int // interleaved rounds of every comparison

	E2ERows       int           // row changes delivered over HTTP per round
	NetEvents     int           // events per agent run across the delay proxy
	LatencyRate   int           // single-row commits per second
	LatencyFor    time.Duration // how long the latency writer runs
	WriterFor     time.Duration // one pgbench run
	WriterClients int           // pgbench clients
	PerTxRate     int           // pertx: pgbench --rate (0: as fast as it goes)
	PerTxHeldRate int           // pertx-held: pgbench --rate, the same for every consumer
	WriterRows    int           // rows in the pgbench table
	MemRows       int           // rows of the single big transaction
	MemRowBytes   int           // size of the single big row
	BigTxRows     int           // rows of the bigtx scenario's one transaction
	Micro         bool          // run the Go micro-benchmarks too
	MicroCount    int           // -count of the micro-benchmarks
	CPUProfile    string        // prefix of CPU profiles of the agent (drain, e2e)
	AgentBin      string        // a built pgaudit-cdc binary instead of go build
	// CompareBins are other builds of pgaudit-cdc (an older commit, say)
	// that pertx and drainbuilds run beside the agent, in the same
	// rounds: name → binary.
	CompareBins map[string]string
	Only        map[string]bool
	Log         io.Writer // progress lines; nil: discarded
	ModuleDir   string    // module root, for go build / go test
}

func (o *Options) defaults() {
	def := func(v *int, full, quick int) {
		if *v <= 0 {
			*v = full
			if o.Quick {
				*v = quick
			}
		}
	}
	defd := func(v *time.Duration, full, quick time.Duration) {
		if *v <= 0 {
			*v = full
			if o.Quick {
				*v = quick
			}
		}
	}
	def(&o.Rows, 1_000_000, 20_000)
	def(&o.Rounds, 5, 1)
	def(&o.E2ERows, 100_000, 2_000)
	def(&o.NetEvents, 20_000, 1_000)
	def(&o.LatencyRate, 1000, 1000)
	defd(&o.LatencyFor, 20*time.Second, 2*time.Second)
	defd(&o.WriterFor, 15*time.Second, 2*time.Second)
	def(&o.WriterClients, 4, 4)
	def(&o.WriterRows, 100_000, 5_000)
	def(&o.PerTxHeldRate, 10_000, 2_000)
	def(&o.MemRows, 1_000_000, 20_000)
	def(&o.MemRowBytes, 64<<20, 4<<20)
	def(&o.BigTxRows, 2_000_000, 20_000)
	def(&o.MicroCount, 6, 1)
	if o.Log == nil {
		o.Log = io.Discard
	}
}

func (o *Options) wants(scenario string) bool {
	return len(o.Only) == 0 || o.Only[scenario]
}

// Results is everything measured; the zero value of a part means it was not
// run.
type Results struct {
	Machine  Machine
	Started  time.Time
	Duration time.Duration
	Opts     Options
	Drain    *DrainResult
	// DrainBuilds is the drain of the agent's build beside CompareBins.
	DrainBuilds *DrainBuildsResult
	E2E         *E2EResult
	Network     *NetworkResult
	PerTx       *PerTxResult
	PerTxHeld   *PerTxResult // pertx with pgbench held to Opts.PerTxHeldRate
	Latency     *LatencyResult
	Writer      *WriterResult
	Memory      *MemoryResult
	BigTx       *BigTxResult
	Micro       *MicroResult
}

// Machine describes where the numbers come from.
type Machine struct {
	NProc     int
	CPU       string
	MemTotal  string
	Kernel    string
	PGVersion string
	GoVersion string
	LoadAvg   string
}

// env is the shared state of one benchmark run: one throwaway cluster.
type env struct {
	opts    Options
	cluster *embedded.Cluster
	admin   *pgx.Conn
	binDir  string
	// key signs the trail of the in-process agents (the agent's default:
	// the benchmarks measure what production pays).
	key *trail.Key
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.opts.Log, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run starts a throwaway PostgreSQL and runs the selected scenarios.
func Run(ctx context.Context, opts Options) (*Results, error) {
	opts.defaults()
	res := &Results{Started: time.Now(), Opts: opts}
	e := &env{opts: opts}
	e.logf("starting a throwaway PostgreSQL cluster")
	cluster, err := embedded.StartLocal(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer cluster.Shutdown()
	e.cluster, e.binDir = cluster, cluster.BinDir()
	e.admin, err = pgx.Connect(ctx, cluster.AdminURL())
	if err != nil {
		return nil, err
	}
	defer e.admin.Close(context.WithoutCancel(ctx))
	res.Machine = describeMachine(ctx, e.admin)

	type step struct {
		name string
		run  func() error
	}
	steps := []step{
		{"drain", func() (err error) { res.Drain, err = e.drain(ctx); return err }},
		{"drainbuilds", func() (err error) {
			if len(e.opts.CompareBins) == 0 {
				e.logf("drainbuilds compares builds: give them with -compare-bin NAME=PATH")
				return nil
			}
			res.DrainBuilds, err = e.drainBuilds(ctx)
			return err
		}},
		{"e2e", func() (err error) { res.E2E, err = e.e2e(ctx); return err }},
		{"network", func() (err error) { res.Network, err = e.network(ctx); return err }},
		{"latency", func() (err error) { res.Latency, err = e.latency(ctx); return err }},
		{"writer", func() (err error) { res.Writer, err = e.writer(ctx); return err }},
		{"pertx", func() (err error) { res.PerTx, err = e.perTx(ctx, opts.PerTxRate); return err }},
		{"pertx-held", func() (err error) { res.PerTxHeld, err = e.perTx(ctx, opts.PerTxHeldRate); return err }},
		{"memory", func() (err error) { res.Memory, err = e.memory(ctx); return err }},
		{"bigtx", func() (err error) { res.BigTx, err = e.bigTx(ctx); return err }},
		{"micro", func() (err error) {
			if !opts.Micro {
				return nil
			}
			res.Micro, err = e.micro(ctx)
			return err
		}},
	}
	for _, s := range steps {
		if !opts.wants(s.name) {
			continue
		}
		start := time.Now()
		e.logf("== %s", s.name)
		if err := s.run(); err != nil {
			return res, fmt.Errorf("%s: %w", s.name, err)
		}
		e.logf("== %s done in %s", s.name, time.Since(start).Round(time.Second))
	}
	res.Duration = time.Since(res.Started)
	return res, nil
}

func describeMachine(ctx context.Context, admin *pgx.Conn) Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				m.MemTotal = strings.TrimSpace(v)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if err := admin.QueryRow(ctx, "SELECT version()").Scan(&m.PGVersion); err != nil {
		m.PGVersion = "unknown (" + err.Error() + ")"
	}
	return m
}

// createDB (re)creates database name and returns its URL.
func (e *env) createDB(ctx context.Context, name string) (string, error) {
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := e.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := e.admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return "", err
	}
	return e.cluster.DatabaseURL(name), nil
}

// openDB creates a fresh database and connects to it; the caller closes
// the connection.
func (e *env) openDB(ctx context.Context, name string) (string, *pgx.Conn, error) {
	url, err := e.createDB(ctx, name)
	if err != nil {
		return "", nil, err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", nil, err
	}
	return url, conn, nil
}

// startProfile starts a CPU profile written to path; stop ends it. An empty
// path profiles nothing.
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// tool finds a PostgreSQL client program: the cluster's bin directory
// first, then PATH.
func (e *env) tool(name string) (string, error) {
	if e.binDir != "" {
		p := filepath.Join(e.binDir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in %s or on PATH", name, e.binDir)
	}
	return p, nil
}

func exec1(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return s
}

func currentLSN(ctx context.Context, conn *pgx.Conn) (pgoutput.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return pgoutput.ParseLSN(s)
}

func confirmedLSN(ctx context.Context, conn *pgx.Conn, slot string) (pgoutput.LSN, error) {
	var s *string
	if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s); err != nil {
		return 0, fmt.Errorf("reading slot %s: %w", slot, err)
	}
	if s == nil {
		return 0, nil
	}
	return pgoutput.ParseLSN(*s)
}

// waitConfirmed polls until slot's confirmed_flush_lsn reaches lsn.
func waitConfirmed(ctx context.Context, conn *pgx.Conn, slot string, lsn pgoutput.LSN, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := confirmedLSN(ctx, conn, slot)
		if err != nil {
			return err
		}
		if got >= lsn {
			return nil
		}
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s confirmed %s, not %s, after %s", slot, got, lsn, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// watchThenSlots watches table and then creates slots, which therefore see
// only the changes that follow, not the registry's own event (self-audit)
// about the new watch. The slot the registry creates is dropped again.
func watchThenSlots(ctx context.Context, conn *pgx.Conn, pub, table string, slots ...string) error {
	const setup = "bench_setup"
	if err := watch(ctx, conn, pub, setup, table); err != nil {
		return err
	}
	if err := dropSlot(ctx, conn, setup); err != nil {
		return err
	}
	for _, s := range slots {
		if err := createSlot(ctx, conn, s); err != nil {
			return err
		}
	}
	return nil
}

func createSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	return exec1(ctx, conn, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
}

// dropSlot drops a slot once no process holds it.
func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The benchmark table: eight columns of the kinds an application table has.
const ordersDDL = `CREATE TABLE orders (
	id         bigint PRIMARY KEY,
	account_id integer NOT NULL,
	status     text NOT NULL,
	amount     numeric(12,2) NOT NULL,
	paid       boolean NOT NULL,
	note       text,
	created_at timestamptz NOT NULL,
	details    jsonb)`

// ordersInsert inserts ids $1..$2.
const ordersInsert = `INSERT INTO orders
	SELECT g, (g % 5000) + 1, (ARRAY['new','paid','shipped','cancelled'])[g % 4 + 1],
		round((g % 100000) / 7.0, 2), g % 3 = 0,
		'order ' || g || ' for customer ' || (g % 5000) || ' via web checkout',
		timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
		jsonb_build_object('sku', 'SKU-' || (g % 997), 'qty', g % 7 + 1, 'tags', jsonb_build_array('gift', 'express'))
	FROM generate_series($1::bigint, $2::bigint) g`

// ordersUpdate updates ids $1..$2.
const ordersUpdate = `UPDATE orders SET status = 'shipped', amount = amount + 1.25, paid = true,
	details = details || '{"shipped": true}' WHERE id BETWEEN $1 AND $2`

// ordersDelete deletes ids $1..$2.
const ordersDelete = `DELETE FROM orders WHERE id BETWEEN $1 AND $2`

const benchKind, benchSource = "other", "pgaudit-cdc-bench"

// watch registers orders in the registry of conn's database (creating the
// publication and slot).
func watch(ctx context.Context, conn *pgx.Conn, pub, slot, table string) error {
	tn, err := watches.ParseTableName(table)
	if err != nil {
		return err
	}
	_, err = watches.NewRegistry(conn, pub, slot).Watch(ctx, tn, benchKind, benchSource)
	return err
}

// generate commits n row changes on orders in transactions of batch rows:
// 40% inserts, 40% updates (of inserted rows), 20% deletes. Ids start at
// base+1. It returns the number of changes, which is n.
func generate(ctx context.Context, conn *pgx.Conn, base, n, batch int) (int, error) {
	ins := n * 2 / 5
	upd := n * 2 / 5
	del := n - ins - upd
	if del > ins {
		return 0, errors.New("generate: more deletes than inserts")
	}
	total := 0
	run := func(sql string, count int) error {
		for lo := 0; lo < count; lo += batch {
			hi := min(lo+batch, count)
			tag, err := conn.Exec(ctx, sql, base+lo+1, base+hi)
			if err != nil {
				return fmt.Errorf("%s: %w", firstLine(sql), err)
			}
			total += int(tag.RowsAffected())
		}
		return nil
	}
	if err := run(ordersInsert, ins); err != nil {
		return 0, err
	}
	if err := run(ordersUpdate, upd); err != nil {
		return 0, err
	}
	if err := run(ordersDelete, del); err != nil {
		return 0, err
	}
	if total != n {
		return total, fmt.Errorf("generate: %d changes, want %d", total, n)
	}
	return total, nil
}

// countSink accepts events after an optional inner sink, counts them and
// closes done when want were accepted. keep, when set, collects the events.
type countSink struct {
	inner   publish.Sink
	n       atomic.Int64
	want    int64
	done    chan struct{}
	once    sync.Once
	doneAt  time.Time
	keep    bool
	events  []*envelope.Event
	observe func(ev *envelope.Event, accepted time.Time)
}

func newCountSink(inner publish.Sink, want int) *countSink {
	return &countSink{inner: inner, want: int64(want), done: make(chan struct{})}
}

func (s *countSink) Publish(ctx context.Context, ev *envelope.Event) error {
	if s.inner != nil {
		if err := s.inner.Publish(ctx, ev); err != nil {
			return err
		}
	}
	s.accepted(ev)
	return nil
}

func (s *countSink) accepted(ev *envelope.Event) {
	if trail.IsTrailKey(ev.Key) {
		return // the trail's KEY and SEAL events are not changes
	}
	now := time.Now()
	if s.observe != nil {
		s.observe(ev, now)
	}
	if s.keep {
		s.events = append(s.events, ev)
	}
	if s.n.Add(1) == s.want {
		s.once.Do(func() {
			s.doneAt = now
			close(s.done)
		})
	}
}

// captureEvents drains n events from slot with an in-process agent, keeps
// them (for producers that replay them) and drops the slot.
func (e *env) captureEvents(ctx context.Context, url string, conn *pgx.Conn, slot, pub string, n int) ([]*envelope.Event, error) {
	capture := newCountSink(nil, n)
	capture.keep = true
	ra, err := e.startAgent(ctx, url, slot, pub, capture, nil, time.Second)
	if err != nil {
		return nil, err
	}
	werr := ra.wait(capture.done, 10*time.Minute, func() string { return fmt.Sprintf("%d of %d", capture.n.Load(), n) })
	if err := ra.stop(); err != nil {
		return nil, err
	}
	if werr != nil {
		return nil, werr
	}
	return capture.events, dropSlot(ctx, conn, slot)
}

// batchSink is the pipelined delivery of publish.Client, which the agent
// uses when its sink offers it.
type batchSink interface {
	PublishBatch(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error
}

// PublishBatch passes a run of events to the inner sink's pipelined
// delivery (one at a time when it has none), counting each as it settles,
// so that the agent takes the same path it takes in production.
func (s *countSink) PublishBatch(ctx context.Context, evs []*envelope.Event, done func(i int, err error)) error {
	bs, ok := s.inner.(batchSink)
	if !ok {
		for i, ev := range evs {
			done(i, s.Publish(ctx, ev))
		}
		return nil
	}
	return bs.PublishBatch(ctx, evs, func(i int, err error) {
		if err == nil {
			s.accepted(evs[i])
		}
		done(i, err)
	})
}

// runningAgent is an in-process agent started by startAgent.
type runningAgent struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // Run's result, once done is closed
}

func (e *env) startAgent(ctx context.Context, dbURL, slot, pub string, sink publish.Sink, spine *publish.Client, status time.Duration) (*runningAgent, error) {
	log := slog.New(slog.NewTextHandler(e.opts.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if e.key == nil {
		key, err := trail.GenerateKey()
		if err != nil {
			return nil, err
		}
		e.key = key
	}
	cfg := agent.Config{
		DatabaseURL: dbURL, Slot: slot, Publication: pub,
		Sink: sink, StatusInterval: status,
		ShutdownGrace: time.Second, Logger: log, Signer: e.key,
	}
	if spine != nil {
		cfg.Spine = spine
	}
	a, err := agent.New(cfg)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	ra := &runningAgent{cancel: cancel, done: make(chan struct{})}
	go func() {
		ra.err = a.Run(actx)
		close(ra.done)
	}()
	return ra, nil
}

// stop stops the agent and waits for it. It may be called more than once.
func (ra *runningAgent) stop() error {
	ra.cancel()
	select {
	case <-ra.done:
		return ra.err
	case <-time.After(30 * time.Second):
		return errors.New("the agent did not stop within 30s")
	}
}

// wait waits for done, failing if the agent returns first or timeout passes.
func (ra *runningAgent) wait(done <-chan struct{}, timeout time.Duration, progress func() string) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ra.done:
		err := ra.err
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("the agent ended early: %w", err)
	case <-t.C:
		return fmt.Errorf("timed out after %s (%s)", timeout, progress())
	}
}
