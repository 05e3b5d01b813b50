// Command bench measures pgaudit-cdc against the limits that matter: the
// server's own decoding rate (pg_recvlogical), a one-at-a-time HTTP
// producer, commit-to-accepted latency, the cost to writers (pgbench against
// no auditing and the predecessor's trigger + NOTIFY design), and peak memory.
// It starts its own throwaway PostgreSQL. See BENCHMARKS.md.
//
//	go run ./cmd/bench                      # full run (10-20 minutes)
//	go run ./cmd/bench -quick               # smoke run (seconds)
//	go run ./cmd/bench -out BENCHMARKS.md   # also rewrite the results section
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		o       Options
		out     string
		only    string
		memMB   int
		noMicro bool
	)
	flag.BoolVar(&o.Quick, "quick", false, "smoke run: tiny sizes, one round, no micro-benchmarks")
	flag.IntVar(&o.Rows, "rows", 0, "row changes for the drain benchmark (default 1000000, quick 20000)")
	flag.IntVar(&o.Rounds, "rounds", 0, "interleaved rounds of each comparison (default 5, quick 1)")
	flag.IntVar(&o.E2ERows, "e2e-rows", 0, "row changes delivered over HTTP per round (default 100000, quick 2000)")
	flag.IntVar(&o.NetEvents, "net-events", 0, "events per agent run across the delay proxy (default 20000, quick 1000)")
	flag.DurationVar(&o.LatencyFor, "latency-for", 0, "how long the latency writer runs (default 20s, quick 2s)")
	flag.IntVar(&o.LatencyRate, "latency-rate", 0, "commits per second of the latency writer (default 1000)")
	flag.DurationVar(&o.WriterFor, "writer-for", 0, "one pgbench run of the writer and pertx scenarios (default 15s, quick 2s)")
	flag.IntVar(&o.PerTxRate, "pertx-rate", 0, "pertx: transactions per second pgbench is held to (default: as fast as it goes)")
	flag.IntVar(&o.PerTxHeldRate, "pertx-held-rate", 0, "pertx-held: transactions per second pgbench is held to, the same for every consumer, so that the whole system's CPU per transaction is compared at one rate and batch size (default 10000, quick 2000)")
	flag.IntVar(&o.WriterRows, "writer-rows", 0, "rows of the pgbench table (default 100000, quick 5000)")
	flag.IntVar(&o.MemRows, "mem-rows", 0, "rows of the big transaction (default 1000000, quick 20000)")
	flag.IntVar(&memMB, "mem-row-mb", 0, "size of the big row in MB (default 64, quick 4)")
	flag.IntVar(&o.BigTxRows, "bigtx-rows", 0, "rows of the one large transaction of the bigtx scenario (default 2000000, quick 20000)")
	flag.IntVar(&o.MicroCount, "micro-count", 0, "-count of the Go micro-benchmarks (default 6)")
	flag.BoolVar(&noMicro, "no-micro", false, "skip the Go micro-benchmarks")
	flag.StringVar(&o.CPUProfile, "cpuprofile", "", "write CPU profiles of the agent in the first drain, e2e and writer (b) round to PREFIX-drain.pprof, PREFIX-e2e.pprof and PREFIX-writer.pprof")
	flag.StringVar(&o.AgentBin, "agent-bin", "", "a built pgaudit-cdc binary for the scenarios that run the binary (default: go build)")
	flag.Func("compare-bin", "NAME=PATH: another build of pgaudit-cdc (an older commit, say), run beside the agent in the same rounds of pertx and drainbuilds as agent:NAME (repeatable)", func(v string) error {
		name, path, ok := strings.Cut(v, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("want NAME=PATH, got %q", v)
		}
		if o.CompareBins == nil {
			o.CompareBins = map[string]string{}
		}
		o.CompareBins[name] = path
		return nil
	})
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run: drain,drainbuilds (with -compare-bin),e2e,network,latency,writer,pertx,pertx-held,memory,bigtx,micro")
	flag.StringVar(&out, "out", "", "rewrite the results section of this file (e.g. BENCHMARKS.md)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	o.MemRowBytes = memMB << 20
	o.Micro = !o.Quick && !noMicro
	if only != "" {
		o.Only = map[string]bool{}
		for _, s := range strings.Split(only, ",") {
			o.Only[strings.TrimSpace(s)] = true
		}
		if o.Only["micro"] && !noMicro {
			o.Micro = true
		}
	}
	o.Log = os.Stderr
	dir, err := moduleDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	o.ModuleDir = dir

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	command := "go run ./cmd/bench"
	if len(os.Args) > 1 {
		command += " " + strings.Join(os.Args[1:], " ")
	}
	section := res.Markdown(command)
	fmt.Print(section)
	if out != "" {
		if err := writeResults(out, section); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "bench: results written to %s (%s)\n", out, time.Since(res.Started).Round(time.Second))
	}
}
