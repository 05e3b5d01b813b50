package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// MemoryResult is the peak RSS of the built agent, run as `pgaudit-cdc run`
// with the stdout sink sent to /dev/null, for workloads of growing size.
type MemoryResult struct {
	Cases []MemoryCase
}

// MemoryCase is one agent process and one workload.
type MemoryCase struct {
	Name      string
	Rows      int   // rows in the one transaction
	RowBytes  int   // size of the largest value
	EventMax  int   // the largest event's rows (old + new), approximately
	IdleHWM   int64 // VmHWM (bytes) once streaming, before the workload
	HWM       int64 // VmHWM after the workload was confirmed
	RSS       int64 // VmRSS then
	DrainTime time.Duration
}

func (e *env) memory(ctx context.Context) (*MemoryResult, error) {
	bin, cleanup, err := e.agentBinary(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	url, conn, err := e.openDB(ctx, "bench_memory")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := exec1(ctx, conn, "SET synchronous_commit = on"); err != nil {
		return nil, err
	}
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	if err := exec1(ctx, conn, "CREATE TABLE blobs (id integer PRIMARY KEY, body text)"); err != nil {
		return nil, err
	}
	const pub, slot = "bench_memory", "memory"
	for _, t := range []string{"orders", "blobs"} {
		if err := watch(ctx, conn, pub, slot, t); err != nil {
			return nil, err
		}
	}

	res := &MemoryResult{}
	type workload struct {
		c   MemoryCase
		sql string
		arg []any
	}
	small := max(e.opts.MemRows/10, 1)
	next := int64(0)
	rowsCase := func(n int) workload {
		lo, hi := next+1, next+int64(n)
		next = hi
		return workload{MemoryCase{Name: fmt.Sprintf("one transaction of %s rows", thousands(int64(n))), Rows: n}, ordersInsert, []any{lo, hi}}
	}
	loads := []workload{rowsCase(small), rowsCase(e.opts.MemRows)}
	for i, size := range []int{e.opts.MemRowBytes / 4, e.opts.MemRowBytes} {
		loads = append(loads, workload{MemoryCase{Name: fmt.Sprintf("one row of %d MB", size>>20), Rows: 1, RowBytes: size, EventMax: size},
			"INSERT INTO blobs VALUES ($1, repeat('0123456789abcdef', $2))", []any{i + 1, size / 16}})
	}
	// The large row changed and deleted: with REPLICA IDENTITY FULL an
	// UPDATE carries it twice (old and new), a DELETE once (old).
	size := e.opts.MemRowBytes
	loads = append(loads,
		workload{MemoryCase{Name: fmt.Sprintf("UPDATE of the %d MB row", size>>20), Rows: 1, RowBytes: size, EventMax: 2 * size},
			"UPDATE blobs SET body = 'fedcba9876543210' || substr(body, 17) WHERE id = 2", nil},
		workload{MemoryCase{Name: fmt.Sprintf("DELETE of the %d MB row", size>>20), Rows: 1, RowBytes: size, EventMax: size},
			"DELETE FROM blobs WHERE id = 2", nil},
		// Last, with logical_decoding_work_mem at its least: the server
		// streams the transaction while in progress, so the large row
		// goes through the agent's spill (spooled, then replayed at its
		// commit).
		workload{MemoryCase{Name: fmt.Sprintf("one row of %d MB after 1,000 small ones, streamed", size>>20), Rows: 1001, RowBytes: size, EventMax: size},
			"INSERT INTO blobs SELECT g, CASE WHEN g = 4001 THEN repeat('0123456789abcdef', $1) ELSE repeat('s', 200) END FROM generate_series(3001, 4001) g", []any{size / 16}})
	for i, w := range loads {
		if i == len(loads)-1 {
			if err := exec1(ctx, conn, "ALTER DATABASE bench_memory SET logical_decoding_work_mem = '64kB'"); err != nil {
				return nil, err
			}
		}
		c, err := e.memoryCase(ctx, conn, bin, url, pub, slot, w.c, w.sql, w.arg...)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.c.Name, err)
		}
		e.logf("memory: %s: idle %d MB, peak %d MB (drained in %s)", c.Name, c.IdleHWM>>20, c.HWM>>20, c.DrainTime.Round(time.Millisecond))
		res.Cases = append(res.Cases, c)
	}
	return res, nil
}

// memoryCase starts a fresh agent process, waits until it streams, commits
// the workload, waits until the agent confirmed it and reads the peak RSS.
func (e *env) memoryCase(ctx context.Context, conn *pgx.Conn, bin, url, pub, slot string, c MemoryCase, sql string, args ...any) (MemoryCase, error) {
	p, err := startAgentProcess(ctx, bin, url, slot, pub, 200*time.Millisecond)
	if err != nil {
		return c, err
	}
	defer p.stop()
	alive := p.alive

	// Streaming and caught up with everything before the workload.
	now, err := currentLSN(ctx, conn)
	if err != nil {
		return c, err
	}
	if err := waitActive(ctx, conn, slot, time.Minute, alive); err != nil {
		return c, err
	}
	if err := waitConfirmed(ctx, conn, slot, now, 5*time.Minute, alive); err != nil {
		return c, err
	}
	if c.IdleHWM, _, err = procMem(p.pid()); err != nil {
		return c, err
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return c, err
	}
	var endS string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&endS); err != nil {
		return c, err
	}
	end, err := pgoutput.ParseLSN(endS)
	if err != nil {
		return c, err
	}
	t0 := time.Now()
	if err := waitConfirmed(ctx, conn, slot, end, 30*time.Minute, alive); err != nil {
		return c, err
	}
	c.DrainTime = time.Since(t0)
	if c.HWM, c.RSS, err = procMem(p.pid()); err != nil {
		return c, err
	}
	return c, nil
}

func waitActive(ctx context.Context, conn *pgx.Conn, slot string, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		var active bool
		if err := conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active); err != nil {
			return err
		}
		if active {
			return nil
		}
		if err := alive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("the agent did not start streaming within " + timeout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procMem reads VmHWM and VmRSS of pid, in bytes.
func procMem(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("unexpected %s line %q", k, line)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmHWM" {
			hwm = n << 10
		} else {
			rss = n << 10
		}
	}
	if hwm == 0 {
		return 0, 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
	}
	return hwm, rss, nil
}

// goTool returns the go command of GOROOT when set, else the one on PATH.
func goTool() (string, error) {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("go")
}

func (e *env) buildAgent(ctx context.Context, out string) error {
	goCmd, err := goTool()
	if err != nil {
		return fmt.Errorf("the memory benchmark builds the agent and needs the go command (or pass -agent-bin): %w", err)
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", out, ".")
	cmd.Dir = e.opts.ModuleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v: %s", err, b)
	}
	return nil
}

// moduleDir finds the directory of go.mod above the working directory.
func moduleDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/pgaudit-cdc/pgaudit-cdc\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/pgaudit-cdc/pgaudit-cdc not found above the working directory")
		}
		dir = parent
	}
}
