package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// CPU accounting: on a shared two-core machine wall-clock rates are noisy,
// CPU seconds per unit of work much less so.

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU returns the user+system CPU time of pid.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	// Fields after "pid (comm) ": state is field 3, utime 14, stime 15.
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// selfCPU returns the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// walsenderSampler follows the CPU time of whichever walsender holds a slot,
// polling from its own connection.
type walsenderSampler struct {
	cancel context.CancelFunc
	done   chan struct{}
	cpu    map[int]time.Duration // pid → latest CPU time seen
}

func (e *env) sampleWalsender(ctx context.Context, slot string) (*walsenderSampler, error) {
	conn, err := pgx.Connect(ctx, e.cluster.AdminURL())
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &walsenderSampler{cancel: cancel, done: make(chan struct{}), cpu: map[int]time.Duration{}}
	poll := func(ctx context.Context) {
		var pid *int32
		if err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid); err != nil || pid == nil {
			return
		}
		if c, err := procCPU(int(*pid)); err == nil && c > s.cpu[int(*pid)] {
			s.cpu[int(*pid)] = c
		}
	}
	go func() {
		defer close(s.done)
		defer conn.Close(context.WithoutCancel(ctx))
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				poll(context.WithoutCancel(ctx))
				return
			case <-t.C:
				poll(sctx)
			}
		}
	}()
	return s, nil
}

// stop takes a last sample and returns the CPU time of the slot's
// walsenders (a walsender that exited is counted up to its last sample).
func (s *walsenderSampler) stop() time.Duration {
	s.cancel()
	<-s.done
	var total time.Duration
	for _, c := range s.cpu {
		total += c
	}
	return total
}
