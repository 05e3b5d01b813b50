package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// LatencyResult is commit-to-accepted latency at a steady commit rate.
type LatencyResult struct {
	Rate     int
	For      time.Duration
	Writes   int
	Achieved float64 // commits per second the writer reached
	Samples  []time.Duration
	P50, P90 time.Duration
	P99      time.Duration
	P999     time.Duration
	Max      time.Duration
}

func (e *env) latency(ctx context.Context) (*LatencyResult, error) {
	url, conn, err := e.openDB(ctx, "bench_latency")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// The cluster runs with synchronous_commit=off, which lets a commit's
	// WAL sit in memory for up to wal_writer_delay (200ms) before the
	// walsender may send it; an application that wants its audit trail
	// promptly commits synchronously, so the writer does.
	if err := exec1(ctx, conn, "SET synchronous_commit = on"); err != nil {
		return nil, err
	}
	const seed = 10_000
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	if err := exec1(ctx, conn, ordersInsert, 1, seed); err != nil {
		return nil, err
	}
	const pub, slot = "bench_latency", "latency"
	if err := watchThenSlots(ctx, conn, pub, "orders", slot); err != nil {
		return nil, err
	}

	spine := newInstantSpine()
	defer spine.Close()
	client, err := newSpineClient(spine)
	if err != nil {
		return nil, err
	}
	rate := e.opts.LatencyRate
	total := int(e.opts.LatencyFor.Seconds() * float64(rate))
	if total < 1 {
		total = 1
	}
	res := &LatencyResult{Rate: rate, For: e.opts.LatencyFor}
	samples := make([]time.Duration, 0, total+1)
	var measuring atomic.Bool
	sink := newCountSink(client, total+1) // one warm-up change, then the measured ones
	sink.observe = func(ev *envelope.Event, accepted time.Time) {
		if measuring.Load() {
			samples = append(samples, accepted.Sub(ev.CommitTime))
		}
	}
	ra, err := e.startAgent(ctx, url, slot, pub, sink, client, time.Second)
	if err != nil {
		return nil, err
	}
	defer func() { _ = ra.stop() }()

	// Warm-up: one change through the whole path (session started, HTTP
	// connection open, read-back done).
	if err := exec1(ctx, conn, "UPDATE orders SET status = 'warm' WHERE id = 1"); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for sink.n.Load() < 1 {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the warm-up change did not arrive within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
	measuring.Store(true)

	e.logf("writing %d single-row transactions at %d/s", total, rate)
	interval := time.Second / time.Duration(rate)
	rng := rand.New(rand.NewPCG(1, 2))
	nextID := int64(seed)
	var inserted []int64
	start := time.Now()
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		var err error
		switch {
		case i%3 == 0 || len(inserted) == 0:
			nextID++
			err = exec1(ctx, conn, ordersInsert, nextID, nextID)
			inserted = append(inserted, nextID)
		case i%3 == 1:
			_, err = conn.Exec(ctx, "UPDATE orders SET status = 'paid', amount = amount + 1, paid = true WHERE id = $1", rng.Int64N(seed)+1)
		default:
			id := inserted[0]
			inserted = inserted[1:]
			_, err = conn.Exec(ctx, "DELETE FROM orders WHERE id = $1", id)
		}
		if err != nil {
			return nil, err
		}
	}
	res.Writes = total
	res.Achieved = float64(total) / time.Since(start).Seconds()
	if err := ra.wait(sink.done, 2*time.Minute, func() string { return fmt.Sprintf("%d of %d events", sink.n.Load(), total+1) }); err != nil {
		return nil, err
	}
	if err := ra.stop(); err != nil {
		return nil, err
	}
	slices.Sort(samples)
	res.Samples = samples
	res.P50 = percentile(samples, 0.50)
	res.P90 = percentile(samples, 0.90)
	res.P99 = percentile(samples, 0.99)
	res.P999 = percentile(samples, 0.999)
	res.Max = samples[len(samples)-1]
	e.logf("latency: p50 %s p99 %s max %s over %d changes (writer %.0f/s)", res.P50, res.P99, res.Max, len(samples), res.Achieved)
	return res, nil
}

// percentile returns the nearest-rank percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
