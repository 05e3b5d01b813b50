package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// Markers around the generated part of BENCHMARKS.md.
const (
	markerStart = "<!-- bench:results:start -->"
	markerEnd   = "<!-- bench:results:end -->"
)

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func secsOf[T any](xs []T, get func(T) time.Duration) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = get(x).Seconds()
	}
	return out
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func f0(v float64) string { return thousands(int64(v + 0.5)) }

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

func secs(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

func mb(b int64) string {
	return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + " MB"
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// Markdown renders the results section of BENCHMARKS.md.
func (r *Results) Markdown(command string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := "full"
	if r.Opts.Quick {
		mode = "quick (smoke test: sizes too small for conclusions)"
	}
	p("### Results of %s (%s)\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), mode)
	m := r.Machine
	p("- Machine: %d CPUs (`nproc`), %s, %s RAM, Linux %s; load average at start %s\n", m.NProc, m.CPU, m.MemTotal, m.Kernel, m.LoadAvg)
	p("- %s\n", m.PGVersion)
	p("- Go %s\n", strings.TrimPrefix(m.GoVersion, "go"))
	p("- Command: `%s` (%s in all)\n\n", command, r.Duration.Round(time.Second))

	if d := r.Drain; d != nil {
		n := d.Rows
		p("#### 1. Drain rate: pgaudit-cdc vs pg_recvlogical\n\n")
		p("%s row changes (40%% INSERT, 40%% UPDATE, 20%% DELETE) on the 8-column `orders` table with REPLICA IDENTITY FULL, in %s transactions, %s of WAL, generated in %s. Each round drains its own three slots, all created before the changes, in rotating order: the agent (in-process, discarding sink) until the sink has %s events, the same with `GOMAXPROCS=1`, and `pg_recvlogical` to `/dev/null` until `--endpos`. Times include connecting.\n\n",
			thousands(int64(n)), thousands(int64(d.Transactions)), mb(d.WALBytes), secs(d.Generate), thousands(int64(n)))
		p("| round | order | pgaudit-cdc | pg_recvlogical | ratio | pgaudit-cdc, GOMAXPROCS=1 | ratio | CPU: agent + its walsender | CPU: agent GOMAXPROCS=1 + walsender | CPU: pg_recvlogical + walsender |\n|---|---|---|---|---|---|---|---|---|---|\n")
		var ra, rr, r1, ratios, ratios1, ac, aw, a1c, a1w, rc, rw []float64
		for i, x := range d.Rounds {
			a, a1, rv := rate(n, x.Agent), rate(n, x.Agent1P), rate(n, x.Recv)
			ra, rr, r1 = append(ra, a), append(rr, rv), append(r1, a1)
			ratios, ratios1 = append(ratios, a/rv), append(ratios1, a1/rv)
			ac, aw = append(ac, x.AgentCPU.Seconds()), append(aw, x.AgentWalsenderCPU.Seconds())
			a1c, a1w = append(a1c, x.Agent1PCPU.Seconds()), append(a1w, x.Agent1PWalsenderCPU.Seconds())
			rc, rw = append(rc, x.RecvCPU.Seconds()), append(rw, x.RecvWalsenderCPU.Seconds())
			order := strings.NewReplacer("A", "agent ", "G", "agent-1P ", "R", "recvlogical ").Replace(x.Order)
			p("| %d | %s | %s (%s rows/s) | %s (%s rows/s) | %.3f | %s (%s rows/s) | %.3f | %s + %s | %s + %s | %s + %s |\n", i+1, strings.TrimSpace(order),
				secs(x.Agent), f0(a), secs(x.Recv), f0(rv), a/rv, secs(x.Agent1P), f0(a1), a1/rv,
				secs(x.AgentCPU), secs(x.AgentWalsenderCPU), secs(x.Agent1PCPU), secs(x.Agent1PWalsenderCPU), secs(x.RecvCPU), secs(x.RecvWalsenderCPU))
		}
		p("| **median** | | **%s rows/s** | **%s rows/s** | **%.3f** | **%s rows/s** | **%.3f** | **%.2f s + %.2f s** | **%.2f s + %.2f s** | **%.2f s + %.2f s** |\n\n",
			f0(median(ra)), f0(median(rr)), median(ratios), f0(median(r1)), median(ratios1),
			median(ac), median(aw), median(a1c), median(a1w), median(rc), median(rw))
		perRow := func(sec float64) string { return fmt.Sprintf("%.1f µs", sec/float64(n)*1e6) }
		p("Median ratio of the rounds, pgaudit-cdc / pg_recvlogical: %.3f with the default GOMAXPROCS (target ≥ 0.9: %s), %.3f with GOMAXPROCS=1. ",
			median(ratios), verdict(median(ratios) >= 0.9), median(ratios1))
		p("CPU per row change: the agent %s (GOMAXPROCS=1: %s; pg_recvlogical %s); the walsender %s when serving the agent, %s when serving pg_recvlogical. ",
			perRow(median(ac)), perRow(median(a1c)), perRow(median(rc)), perRow(median(aw)), perRow(median(rw)))
		p("While draining, agent + walsender keep %.2f of the %d cores busy (GOMAXPROCS=1: %.2f; pg_recvlogical + walsender %.2f).\n\n",
			(median(ac)+median(aw))/median(secsOf(d.Rounds, func(x DrainRound) time.Duration { return x.Agent })), r.Machine.NProc,
			(median(a1c)+median(a1w))/median(secsOf(d.Rounds, func(x DrainRound) time.Duration { return x.Agent1P })),
			(median(rc)+median(rw))/median(secsOf(d.Rounds, func(x DrainRound) time.Duration { return x.Recv })))
	}

	if x := r.DrainBuilds; x != nil {
		p("#### 1c. Drain, builds side by side\n\n")
		p("Each build runs as its built binary (`run --status-interval 100ms`, stdout sink on `/dev/null`, signing where the build signs), on a database set up by its own `watch`, draining %s row changes generated after its slots were made; rounds interleaved, the order rotating. Time is from the process's start to the slot confirming the backlog's end.\n\n", thousands(int64(x.Rows)))
		p("| round | build | time | rows/s | CPU per row | walsender CPU per row |\n|---|---|---|---|---|---|\n")
		rates := map[string][]float64{}
		cpus := map[string][]float64{}
		ratio := map[string][]float64{}
		cpuRatio := map[string][]float64{}
		for i, rd := range x.Rounds {
			for _, b := range x.Builds {
				run := rd[b]
				perRow := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(x.Rows) }
				rates[b] = append(rates[b], rate(x.Rows, run.Time))
				cpus[b] = append(cpus[b], perRow(run.CPU))
				if b != ptAgent {
					ratio[b] = append(ratio[b], rate(x.Rows, rd[ptAgent].Time)/rate(x.Rows, run.Time))
					cpuRatio[b] = append(cpuRatio[b], perRow(rd[ptAgent].CPU)/perRow(run.CPU))
				}
				p("| %d | %s | %s | %s | %.2f µs | %.2f µs |\n", i+1, b, ms(run.Time), f0(rate(x.Rows, run.Time)), perRow(run.CPU), perRow(run.WalsenderCPU))
			}
		}
		p("\n")
		for _, b := range x.Builds[1:] {
			p("- The agent against %s (medians of the per-round ratios): drain rate **%.3f**, CPU per row %.3f (the agent %s rows/s and %.2f µs per row; %s %s rows/s and %.2f µs).\n",
				b, median(ratio[b]), median(cpuRatio[b]), f0(median(rates[ptAgent])), median(cpus[ptAgent]), b, f0(median(rates[b])), median(cpus[b]))
		}
		p("\n")
	}

	if x := r.E2E; x != nil {
		n := x.Rows
		p("#### 2. End to end to an HTTP spine\n\n")
		p("%s row changes (mean envelope %d bytes), delivered to an in-process HTTP server that answers `201` at once. *agent*: slot → agent → `publish.Client` → HTTP with its default window of %d pipelined requests, timed from the agent's start to the last `201`. *client*: a fresh `publish.Client` replaying the same decoded envelopes one at a time (`Publish`). *net/http*: a keep-alive `net/http` client POSTing the same bodies sequentially, the ceiling of a one-at-a-time producer. Producers rotate order each round.\n\n", thousands(int64(n)), x.BodyBytes, publish.DefaultMaxInFlight)
		p("| round | order | agent (events/s) | client (events/s) | net/http (events/s) | agent / net/http | client / net/http |\n|---|---|---|---|---|---|---|\n")
		var va, vc, vp, r1, r2 []float64
		for i, rd := range x.Rounds {
			a, c, pl := rate(n, rd.Agent), rate(n, rd.Client), rate(n, rd.Plain)
			va, vc, vp = append(va, a), append(vc, c), append(vp, pl)
			r1, r2 = append(r1, a/pl), append(r2, c/pl)
			order := strings.NewReplacer("A", "agent ", "C", "client ", "P", "net/http ").Replace(rd.Order)
			p("| %d | %s | %s | %s | %s | %.3f | %.3f |\n", i+1, strings.TrimSpace(order), f0(a), f0(c), f0(pl), a/pl, c/pl)
		}
		p("| **median** | | **%s** | **%s** | **%s** | **%.3f** | **%.3f** |\n\n", f0(median(va)), f0(median(vc)), f0(median(vp)), median(r1), median(r2))
		p("Loopback delivery, agent / bare sequential keep-alive client: %.3f (target ≥ 1.0: %s).\n\n", median(r1), verdict(median(r1) >= 1.0))
		perEv := func(get func(E2ERound) time.Duration) string {
			return fmt.Sprintf("%.1f µs", median(secsOf(x.Rounds, get))/float64(n)*1e6)
		}
		p("CPU per event (median; this process, i.e. producer and in-process server together): agent %s plus %s in its walsender; client %s; net/http %s.\n\n",
			perEv(func(r E2ERound) time.Duration { return r.AgentCPU }), perEv(func(r E2ERound) time.Duration { return r.WalsenderCPU }),
			perEv(func(r E2ERound) time.Duration { return r.ClientCPU }), perEv(func(r E2ERound) time.Duration { return r.PlainCPU }))
	}

	if x := r.Network; x != nil {
		p("#### 2b. Delivery across a network\n\n")
		p("A spine stand-in (`internal/netsim`) appends one event at a time across all connections, %s of CPU each (audit-stream-py's measured sequential rate, 2,437 events/s, is 410 µs per append), and answers `201` with the event. The agent drains its own slot (%s row changes generated before the rounds) through `publish.Client` with its default window (sized from the measured round trip and delivery rate, at most %d pipelined requests), behind a TCP proxy of our own on loopback that delays every chunk by half the added round trip in each direction without limiting the bytes in flight. The yardstick is the same spine's rate from a sequential keep-alive client on loopback, with no proxy. The window-1 case (one request at a time, no pipelining) sends %s events. %d rounds; times from the agent's start to the last `201`.\n\n",
			x.Service, thousands(int64(x.Events)), x.Window, thousands(int64(x.Window1Events)), len(x.Rounds))
		p("| case | events/s per round | median events/s | / sequential on loopback |\n|---|---|---|---|\n")
		seq := median(ratesOf(x.Rounds, seqLoopback, x.Events))
		for _, c := range x.Cases {
			rs := ratesOf(x.Rounds, c.Name, c.Events)
			var each []string
			for _, v := range rs {
				each = append(each, f0(v))
			}
			p("| %s | %s | **%s** | **%.2f** |\n", c.Name, strings.Join(each, ", "), f0(median(rs)), median(rs)/seq)
		}
		at := func(rtt time.Duration) float64 { return median(ratesOf(x.Rounds, adaptiveCase(rtt), x.Events)) / seq }
		p("\nTargets, against the spine's own sequential rate: ≥ 0.9 at 10 ms round trip (%.2f: %s), ≥ 0.8 at 50 ms (%.2f: %s), and at 0.5–2.7 ms no worse than the fixed window of 32 was (0.98 and 0.93 in the last run with it): %.2f and %.2f.\n\n",
			at(10*time.Millisecond), verdict(at(10*time.Millisecond) >= 0.9), at(50*time.Millisecond), verdict(at(50*time.Millisecond) >= 0.8),
			at(500*time.Microsecond), at(2700*time.Microsecond))
	}

	if l := r.Latency; l != nil {
		p("#### 3. Commit-to-accepted latency\n\n")
		p("A writer commits single-row transactions (INSERT, UPDATE, DELETE in turn, `synchronous_commit = on`) at %d/s for %s (reached %.0f/s); the agent delivers them through `publish.Client` (pipelining on, default window) to the instant HTTP server. Latency = time the `201` was received − the commit timestamp in the event (`envelope.Event.CommitTime`), over %s changes.\n\n",
			l.Rate, l.For, l.Achieved, thousands(int64(len(l.Samples))))
		p("| p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|\n| %s | %s | %s | %s | %s |\n\n", ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max))
		p("p99 target < 20 ms on loopback: %s.\n\n", verdict(l.P99 < 20*time.Millisecond))
	}

	if w := r.Writer; w != nil {
		p("#### 4. Writer overhead (pgbench)\n\n")
		p("`pgbench -n -c %d -j %d -T %d --max-tries=10` with a custom script: one transaction = UPDATE of a random row + DELETE of another + INSERT of it again (3 row changes), on `orders` with %s rows, one database per variant. Autovacuum is off on these tables; instead each run starts with `CHECKPOINT` and is followed by `VACUUM ANALYZE orders`, so that no variant's clean-up runs during another's run. For (b) the agent is started and has caught up before pgbench starts; for (b1) a new slot is created and pg_recvlogical started. Rounds interleave the variants in the order %s.\n\n",
			w.Clients, min(w.Clients, 2), int(w.For.Seconds()), thousands(int64(w.Rows)), strings.Join(w.Variants, ", "))
		for _, v := range w.Variants {
			p("- (%s) %s\n", v, variantNames[v])
		}
		p("\n| round |")
		for _, v := range w.Variants {
			p(" (%s) tps |", v)
		}
		p("\n|---|")
		for range w.Variants {
			p("---|")
		}
		p("\n")
		tps := map[string][]float64{}
		ratios := map[string][]float64{}
		for i, rd := range w.Rounds {
			p("| %d |", i+1)
			for _, v := range w.Variants {
				tps[v] = append(tps[v], rd[v].TPS)
				ratios[v] = append(ratios[v], rd[v].TPS/rd[varNone].TPS)
				p(" %s |", f0(rd[v].TPS))
			}
			p("\n")
		}
		p("| **median** |")
		for _, v := range w.Variants {
			p(" **%s** |", f0(median(tps[v])))
		}
		p("\n| **median ratio to (a)** |")
		for _, v := range w.Variants {
			p(" **%.3f** |", median(ratios[v]))
		}
		p("\n\n")
		cdc, trig := median(ratios[varCDC]), median(ratios[varTrigger])
		loss := func(v string) string { return fmt.Sprintf("%.1f%%", (1-median(ratios[v]))*100) }
		p("Ratios are medians of the per-round ratios. Writers lose %s of their throughput to pgaudit-cdc with the agent on the same machine (b/a = %.3f) and %s to the trigger design (c/a = %.3f)",
			loss(varCDC), cdc, loss(varTrigger), trig)
		switch {
		case 1-cdc > 0.005 && trig < cdc:
			p(": pgaudit-cdc costs writers %.1f× less.\n\n", (1-trig)/(1-cdc))
		case trig < cdc:
			p(": pgaudit-cdc costs writers nothing measurable.\n\n")
		default:
			p(": on this machine pgaudit-cdc costs writers %.2f× what the trigger design does.\n\n", (1-cdc)/(1-trig))
		}
		p("Where pgaudit-cdc's cost comes from: the writers' own path pays only the extra WAL of REPLICA IDENTITY FULL (b0/a = %.3f); logical decoding in the walsender, which any consumer causes on the database host, brings it to b1/a = %.3f; the rest, down to b/a = %.3f, is the agent's own CPU competing with the writers for the same %d cores, which an agent on another host does not take. With GOMAXPROCS=1 the agent needs much less CPU per event here (see below) and writers keep b2/a = %.3f",
			median(ratios[varWALOnly]), median(ratios[varDecode]), cdc, r.Machine.NProc, median(ratios[varCDC1P]))
		if one := median(ratios[varCDC1P]); one > trig && 1-one > 0.005 {
			p(", %.1f× less loss than the trigger's", (1-trig)/(1-one))
		}
		p(". The trigger's cost is inside every writing transaction (JSON built per row, `pg_notify` queued under a cluster-wide lock at commit) and cannot be moved anywhere.\n\n")
		var caught []time.Duration
		var delivered, notified []string
		cpu := map[string][2][]float64{}
		for _, rd := range w.Rounds {
			caught = append(caught, rd[varCDC].CatchUp)
			delivered = append(delivered, thousands(rd[varCDC].Delivered))
			notified = append(notified, thousands(rd[varTrigger].Delivered))
			for _, v := range []string{varDecode, varCDC, varCDC1P, varTrigger} {
				c := cpu[v]
				c[0] = append(c[0], rd[v].WalsenderCPU.Seconds())
				c[1] = append(c[1], rd[v].ConsumerCPU.Seconds())
				cpu[v] = c
			}
		}
		slices.Sort(caught)
		p("Auditing kept up: the agent delivered %s events in the (b) runs and needed at most %s after pgbench ended to confirm the last one; the LISTEN client received %s notifications in the (c) runs.\n\n",
			strings.Join(delivered, ", "), ms(caught[len(caught)-1]), strings.Join(notified, ", "))
		cores := func(v string) float64 { return (median(cpu[v][0]) + median(cpu[v][1])) / w.For.Seconds() }
		perEvent := func(v string) float64 {
			var us []float64
			for _, rd := range w.Rounds {
				if rd[v].Delivered > 0 {
					us = append(us, rd[v].ConsumerCPU.Seconds()/float64(rd[v].Delivered)*1e6)
				}
			}
			return median(us)
		}
		p("CPU used by the auditing side outside the writing backends, per %d s run (median, until everything was delivered): (b1) walsender %.2f s + pg_recvlogical %.2f s (%.2f cores); (b) walsender %.2f s + agent %.2f s (%.2f cores, %.0f µs of agent CPU per event); (b2) walsender %.2f s + agent %.2f s (%.2f cores, %.0f µs per event); (c) LISTEN client %.2f s (%.2f cores; the trigger's own work is inside the writing backends and shows only in tps).\n\n",
			int(w.For.Seconds()), median(cpu[varDecode][0]), median(cpu[varDecode][1]), cores(varDecode),
			median(cpu[varCDC][0]), median(cpu[varCDC][1]), cores(varCDC), perEvent(varCDC),
			median(cpu[varCDC1P][0]), median(cpu[varCDC1P][1]), cores(varCDC1P), perEvent(varCDC1P),
			median(cpu[varTrigger][1]), cores(varTrigger))
	}

	if x := r.PerTx; x != nil {
		title := "4b. CPU per transaction and keeping up: the whole agent process against pg_recvlogical"
		if x.Rate > 0 {
			title += fmt.Sprintf(", pgbench held to %s transactions a second", thousands(int64(x.Rate)))
		}
		x.markdown(p, title)
	}
	if x := r.PerTxHeld; x != nil {
		x.markdown(p, fmt.Sprintf("4c. The whole system per transaction at one rate: pgbench held to %s transactions a second for every consumer", thousands(int64(x.Rate))))
	}

	if mem := r.Memory; mem != nil {
		p("#### 5. Memory\n\n")
		p("The built binary runs as `pgaudit-cdc run` with the stdout sink sent to `/dev/null`, a fresh process per workload. Peak RSS is `VmHWM` from `/proc/<pid>/status` once the slot confirmed the workload; idle is the same once streaming, before the workload.\n\n")
		p("| workload | idle VmHWM | peak VmHWM | VmRSS after | peak − idle | drained in |\n|---|---|---|---|---|---|\n")
		for _, c := range mem.Cases {
			p("| %s | %s | %s | %s | %s | %s |\n", c.Name, mb(c.IdleHWM), mb(c.HWM), mb(c.RSS), mb(c.HWM-c.IdleHWM), secs(c.DrainTime))
		}
		p("\n")
		for _, c := range mem.Cases {
			if c.EventMax > 0 {
				p("- %s (the event's rows: %s): peak − idle = **%.2f ×** the event.\n", c.Name, mb(int64(c.EventMax)), float64(c.HWM-c.IdleHWM)/float64(c.EventMax))
			}
		}
		p("\n")
	}

	if bt := r.BigTx; bt != nil {
		p("#### 5b. One large transaction\n\n")
		p("One INSERT of %s `orders` rows in one transaction, committed while the consumer streams, interleaved per round (the order rotates). Server spill and streamed bytes are the slot's `pg_stat_replication_slots` figures for it; COMMIT → sent is until `pg_stat_replication.sent_lsn` reached the transaction's end; COMMIT → done is until the slot confirmed it (pg_recvlogical: written and flushed to `/dev/null`; the agent: every event delivered to the stdout sink, sent to `/dev/null`); peak RSS is the process's `VmHWM`, read just before it stops (a child's `ru_maxrss` would carry the bench process's own peak over `exec`); the agent's spill is `pgaudit_cdc_spilled_bytes_total`.\n\n", thousands(int64(bt.Rows)))
		p("| round | consumer | server spill | streamed | COMMIT → sent | COMMIT → done | peak RSS | agent spill |\n|---|---|---|---|---|---|---|---|\n")
		by := map[string][]BigTxCase{}
		for i, round := range bt.Rounds {
			for _, c := range round {
				p("| %d | %s | %s | %s | %s | %s | %s | %s |\n", i+1, c.Name, mb(c.ServerSpill), mb(c.Streamed), secs(c.Sent), secs(c.Done), mb(c.PeakRSS), mb(c.AgentSpill))
				by[c.Name] = append(by[c.Name], c)
			}
		}
		get := func(name string, f func(BigTxCase) float64) float64 {
			var vs []float64
			for _, c := range by[name] {
				vs = append(vs, f(c))
			}
			return median(vs)
		}
		spill := func(c BigTxCase) float64 { return float64(c.ServerSpill) }
		sent := func(c BigTxCase) float64 { return c.Sent.Seconds() }
		done := func(c BigTxCase) float64 { return c.Done.Seconds() }
		rss := func(c BigTxCase) float64 { return float64(c.PeakRSS) / (1 << 20) }
		maxSpill := 0.0
		for _, c := range by[bigStreaming] {
			maxSpill = max(maxSpill, spill(c))
		}
		ratio := get(bigStreaming, sent) / get(bigRecv, sent)
		p("\nMedians. Server spill with the agent streaming: %s in every round (target 0 MB: %s); with whole transactions %s. COMMIT → everything sent: agent %.2f s against pg_recvlogical's %.2f s, **%.2f×** (target ≤ 1.5×: %s); with whole transactions %.2f s. Agent peak RSS **%.0f MB** (target ≤ 100 MB: %s; pg_recvlogical %.0f MB, whole transactions %.0f MB). COMMIT → every event delivered: %.2f s streaming, %.2f s with whole transactions (target no worse: %s).\n\n",
			mb(int64(maxSpill)), verdict(maxSpill == 0), mb(int64(get(bigWhole, spill))),
			get(bigStreaming, sent), get(bigRecv, sent), ratio, verdict(ratio <= 1.5), get(bigWhole, sent),
			get(bigStreaming, rss), verdict(get(bigStreaming, rss) <= 100), get(bigRecv, rss), get(bigWhole, rss),
			get(bigStreaming, done), get(bigWhole, done), verdict(get(bigStreaming, done) <= get(bigWhole, done)*1.05))
	}

	if mi := r.Micro; mi != nil {
		p("#### 6. Go micro-benchmarks\n\n`%s`, medians over the runs.\n\n", mi.Command)
		p("| package | benchmark | ns/op | MB/s | B/op | allocs/op |\n|---|---|---|---|---|---|\n")
		for _, bch := range mi.Benches {
			val := func(unit, format string) string {
				v, ok := bch.Values[unit]
				if !ok {
					return ""
				}
				return fmt.Sprintf(format, v)
			}
			p("| %s | %s | %s | %s | %s | %s |\n", strings.TrimPrefix(bch.Pkg, "github.com/pgaudit-cdc/pgaudit-cdc/"), bch.Name,
				val("ns/op", "%.0f"), val("MB/s", "%.1f"), val("B/op", "%.0f"), val("allocs/op", "%.0f"))
		}
		p("\n")
	}
	return b.String()
}

// ratesOf is the events/s of one network case in each round.
func ratesOf(rounds []NetworkRound, name string, n int) []float64 {
	var rs []float64
	for _, rd := range rounds {
		rs = append(rs, rate(n, rd[name]))
	}
	return rs
}

// writeResults replaces the text between the markers in path (appending
// the markers when they are missing) with section.
func writeResults(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	text := string(old)
	block := markerStart + "\n" + section + markerEnd
	i := strings.Index(text, markerStart)
	j := strings.Index(text, markerEnd)
	if i >= 0 && j > i {
		text = text[:i] + block + text[j+len(markerEnd):]
	} else {
		if text != "" && !strings.HasSuffix(text, "\n") {
			text += "\n"
		}
		text += "\n" + block + "\n"
	}
	return os.WriteFile(path, []byte(text), 0o644)
}

// markdown writes a pertx pass: every round's runs, then the medians and
// the targets of issue 24 (part 4).
func (x *PerTxResult) markdown(p func(string, ...any), title string) {
	p("#### %s\n\n", title)
	rate := "as fast as it goes"
	if x.Rate > 0 {
		rate = fmt.Sprintf("held to %s transactions a second (`--rate`)", thousands(int64(x.Rate)))
	}
	p("`pgbench -n -c %d -j %d -T %d`, %s, with single-row transactions, weighted 8:1:1: UPDATE of a random row, INSERT (ON CONFLICT DO NOTHING), DELETE, on `orders` (%s rows, REPLICA IDENTITY FULL as `watch` sets it), one database per consumer: *agent* is the built binary, `pgaudit-cdc run --status-interval 100ms` with its stdout sink on `/dev/null`; *pg_recvlogical* (pgoutput, bytes only) and *wal2json* (pg_recvlogical with wal2json's format 2: JSON with the old and new rows and the transaction boundaries, as the agent sends) write to `/dev/null`; *none* has no consumer. *Behind* is the WAL the consumer had not taken when pgbench ended: not confirmed by the agent (it confirms only what it delivered), not yet sent by pg_recvlogical's walsender. CPU is the consumer process's (utime + stime) from pgbench's start until it caught up, divided by pgbench's transactions.\n\n",
		x.Clients, min(x.Clients, 2), int(x.For.Seconds()), rate, thousands(int64(x.Rows)))
	p("| round | consumer | tps | tps / none | WAL written | behind at the end | seconds of WAL behind | caught up in | consumer CPU per tx | walsender CPU per tx |\n|---|---|---|---|---|---|---|---|---|---|\n")
	type agg struct{ tpsRatio, behindSec, cpu, total []float64 }
	all := map[string]*agg{ptRecv: {}, ptW2J: {}, ptAgent: {}}
	consumers := []string{ptNone, ptRecv, ptW2J, ptAgent}
	var compared []string
	if len(x.Rounds) > 0 {
		for v := range x.Rounds[0] {
			if strings.HasPrefix(v, ptCompare) {
				compared = append(compared, v)
				all[v] = &agg{}
			}
		}
		slices.Sort(compared)
		consumers = append(consumers, compared...)
	}
	var cpuRatio, totalRatio []float64
	minTPS := math.Inf(1)
	vsCompared := map[string][]float64{}
	for i, rd := range x.Rounds {
		for _, v := range compared {
			vsCompared[v] = append(vsCompared[v], perTx(rd[ptAgent].ConsumerCPU, rd[ptAgent].Txns)/perTx(rd[v].ConsumerCPU, rd[v].Txns))
		}
		for _, v := range consumers {
			run, ok := rd[v]
			if !ok {
				continue
			}
			minTPS = min(minTPS, run.TPS)
			ratio := run.TPS / rd[ptNone].TPS
			behindSec := 0.0
			if run.WALBytes > 0 {
				behindSec = float64(run.BehindBytes) / (float64(run.WALBytes) / x.For.Seconds())
			}
			if a := all[v]; a != nil {
				a.tpsRatio = append(a.tpsRatio, ratio)
				a.behindSec = append(a.behindSec, behindSec)
				a.cpu = append(a.cpu, perTx(run.ConsumerCPU, run.Txns))
				a.total = append(a.total, perTx(run.ConsumerCPU+run.WalsenderCPU, run.Txns))
			}
			if v == ptNone {
				p("| %d | %s | %s | 1 | %s | | | | | |\n", i+1, v, f0(run.TPS), mb(run.WALBytes))
				continue
			}
			p("| %d | %s | %s | %.3f | %s | %s | %.2f s | %s | %.1f µs | %.1f µs |\n", i+1, v, f0(run.TPS), ratio, mb(run.WALBytes), mb(run.BehindBytes),
				behindSec, ms(run.CatchUp), perTx(run.ConsumerCPU, run.Txns), perTx(run.WalsenderCPU, run.Txns))
		}
		ag, rc := rd[ptAgent], rd[ptRecv]
		cpuRatio = append(cpuRatio, perTx(ag.ConsumerCPU, ag.Txns)/perTx(rc.ConsumerCPU, rc.Txns))
		totalRatio = append(totalRatio, perTx(ag.ConsumerCPU+ag.WalsenderCPU, ag.Txns)/perTx(rc.ConsumerCPU+rc.WalsenderCPU, rc.Txns))
	}
	ag, rc := all[ptAgent], all[ptRecv]
	p("\nMedians: agent CPU %.1f µs per transaction against pg_recvlogical's %.1f µs: **%.2f×** (median of the per-round ratios; target ≤ 2×: %s). WAL behind when pgbench ended: agent **%.2f s** of WAL (slowest round %.2f s; target under 1 s: %s), pg_recvlogical %.2f s. Writers keep %.3f of their no-audit rate with the agent, %.3f with pg_recvlogical.\n\n",
		median(ag.cpu), median(rc.cpu), median(cpuRatio), verdict(median(cpuRatio) <= 2), median(ag.behindSec), slices.Max(ag.behindSec), verdict(slices.Max(ag.behindSec) < 1),
		median(rc.behindSec), median(ag.tpsRatio), median(rc.tpsRatio))
	for _, v := range compared {
		c := all[v]
		p("Another build beside the agent in the same rounds, %s: CPU %.1f µs per transaction, consumer + walsender %.1f µs (the agent: %.1f and %.1f µs); the agent's CPU per transaction / %s's, median of the per-round ratios: **%.3f**.\n\n",
			v, median(c.cpu), median(c.total), median(ag.cpu), median(ag.total), v, median(vsCompared[v]))
	}
	w2j := all[ptW2J]
	if len(w2j.total) == 0 {
		return
	}
	p("The whole system's CPU per transaction, consumer + its walsender (medians): agent **%.1f µs**, pg_recvlogical with pgoutput %.1f µs, with wal2json %.1f µs; the agent's / pgoutput's, median of the per-round ratios: **%.2f×**. Target: the agent's ≤ pgoutput's (%s) and < wal2json's (%s).",
		median(ag.total), median(rc.total), median(w2j.total), median(totalRatio), verdict(median(ag.total) <= median(rc.total)), verdict(median(ag.total) < median(w2j.total)))
	if x.Rate > 0 {
		// A rate pgbench could not keep compares the consumers at different
		// rates again, which is what holding it was meant to avoid.
		held := minTPS >= 0.95*float64(x.Rate)
		p(" Proposed target at one rate (issue 24, part 4): ≤ 1.15× pgoutput's (%s).", verdict(median(totalRatio) <= 1.15))
		if held {
			p(" pgbench kept the rate with every consumer (slowest run %s tps).", f0(minTPS))
		} else {
			p(" **pgbench fell behind the rate** (slowest run %s tps): the consumers were compared at different rates; run again with a lower `-pertx-held-rate`.", f0(minTPS))
		}
	}
	p("\n\n")
}
