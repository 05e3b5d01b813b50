package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
)

// TestSmoke runs the whole harness in quick mode: every scenario with tiny
// sizes. It checks that each produced sane numbers, never how good they are.
func TestSmoke(t *testing.T) {
	pgtest.Needed(t)
	dir, err := moduleDir()
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Quick: true, ModuleDir: dir, Log: &log})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	t.Logf("harness log:\n%s", log.String())

	if d := res.Drain; d == nil || len(d.Rounds) == 0 {
		t.Error("drain: no rounds")
	} else {
		for _, r := range d.Rounds {
			if r.Agent <= 0 || r.Agent1P <= 0 || r.Recv <= 0 {
				t.Errorf("drain: durations agent %s, agent GOMAXPROCS=1 %s, pg_recvlogical %s", r.Agent, r.Agent1P, r.Recv)
			}
		}
		if d.WALBytes <= 0 {
			t.Errorf("drain: %d bytes of WAL", d.WALBytes)
		}
	}
	if x := res.E2E; x == nil || len(x.Rounds) == 0 {
		t.Error("e2e: no rounds")
	} else {
		for _, r := range x.Rounds {
			if r.Agent <= 0 || r.Client <= 0 || r.Plain <= 0 {
				t.Errorf("e2e: durations %+v", r)
			}
		}
		if x.BodyBytes < 200 {
			t.Errorf("e2e: mean envelope of %d bytes", x.BodyBytes)
		}
	}
	if l := res.Latency; l == nil {
		t.Error("latency: not run")
	} else {
		if len(l.Samples) != l.Writes || l.Writes == 0 {
			t.Errorf("latency: %d samples for %d writes", len(l.Samples), l.Writes)
		}
		if l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
			t.Errorf("latency: p50 %s p99 %s max %s", l.P50, l.P99, l.Max)
		}
	}
	if w := res.Writer; w == nil || len(w.Rounds) == 0 {
		t.Error("writer: no rounds")
	} else {
		for _, rd := range w.Rounds {
			for _, v := range w.Variants {
				if rd[v].TPS <= 0 || rd[v].Txns <= 0 {
					t.Errorf("writer (%s): %+v", v, rd[v])
				}
			}
			if rd[varCDC].Delivered <= 0 || rd[varCDC1P].Delivered <= 0 || rd[varTrigger].Delivered <= 0 {
				t.Errorf("writer: nothing delivered by the auditing side: cdc %d, cdc GOMAXPROCS=1 %d, trigger %d", rd[varCDC].Delivered, rd[varCDC1P].Delivered, rd[varTrigger].Delivered)
			}
			if rd[varDecode].WalsenderCPU <= 0 && rd[varCDC].WalsenderCPU <= 0 {
				t.Errorf("writer: no walsender CPU time measured")
			}
		}
	}
	if m := res.Memory; m == nil || len(m.Cases) == 0 {
		t.Error("memory: no cases")
	} else {
		for _, c := range m.Cases {
			if c.IdleHWM <= 0 || c.HWM < c.IdleHWM {
				t.Errorf("memory (%s): idle %d, peak %d", c.Name, c.IdleHWM, c.HWM)
			}
		}
	}
	if b := res.BigTx; b == nil || len(b.Rounds) == 0 {
		t.Error("bigtx: no rounds")
	} else {
		for _, round := range b.Rounds {
			for _, c := range round {
				if c.Sent <= 0 || c.Done < c.Sent || c.PeakRSS <= 0 {
					t.Errorf("bigtx (%s): sent %s, done %s, peak RSS %d", c.Name, c.Sent, c.Done, c.PeakRSS)
				}
				// The smoke run lowers logical_decoding_work_mem so that
				// even its small transaction is streamed, or spilled (how
				// much else the server spills at 64 kB is not its to judge).
				if streams := c.Name != bigWhole; streams != (c.Streamed > 0) || (!streams && c.ServerSpill == 0) {
					t.Errorf("bigtx (%s): streamed %d bytes, server spill %d bytes", c.Name, c.Streamed, c.ServerSpill)
				}
			}
		}
	}
	for _, x := range []*PerTxResult{res.PerTx, res.PerTxHeld} {
		if x == nil || len(x.Rounds) == 0 {
			t.Error("pertx: no rounds")
			continue
		}
		for _, rd := range x.Rounds {
			for _, v := range []string{ptNone, ptRecv, ptW2J, ptAgent} {
				run, ok := rd[v]
				if !ok || run.Txns <= 0 || run.TPS <= 0 || run.WALBytes <= 0 {
					t.Errorf("pertx at rate %d (%s): %+v", x.Rate, v, run)
					continue
				}
				if v != ptNone && (run.ConsumerCPU <= 0 || run.WalsenderCPU <= 0) {
					t.Errorf("pertx at rate %d (%s): consumer CPU %s, walsender CPU %s", x.Rate, v, run.ConsumerCPU, run.WalsenderCPU)
				}
			}
		}
	}
	if x := res.PerTxHeld; x != nil && x.Rate != res.Opts.PerTxHeldRate {
		t.Errorf("pertx-held: rate %d, want %d", x.Rate, res.Opts.PerTxHeldRate)
	}
	md := res.Markdown("go test ./bench -run TestSmoke")
	for _, want := range []string{"#### 1.", "#### 2.", "#### 3.", "#### 4.", "#### 4b.", "#### 4c.", "#### 5.", "#### 5b."} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
pkg: github.com/pgaudit-cdc/pgaudit-cdc/decode
BenchmarkRow-2   	  500000	      2000 ns/op	 300.00 MB/s	     800 B/op	       5 allocs/op
BenchmarkRow-2   	  500000	      1000 ns/op	 600.00 MB/s	     800 B/op	       5 allocs/op
BenchmarkRow-2   	  500000	      3000 ns/op	 200.00 MB/s	     800 B/op	       5 allocs/op
PASS
`
	got := parseBenchOutput(out)
	if len(got) != 1 || got[0].Name != "BenchmarkRow" || got[0].Runs != 3 || got[0].Values["ns/op"] != 2000 || got[0].Values["allocs/op"] != 5 {
		t.Fatalf("got %+v", got)
	}
}
