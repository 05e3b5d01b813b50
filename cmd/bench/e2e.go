package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/netsim"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// E2EResult compares three producers POSTing the same envelopes to a spine
// that answers 201 at once: the agent (pipelined), publish.Client one at a
// time, and a bare sequential net/http client.
type E2EResult struct {
	Rows      int
	BodyBytes int // mean envelope size
	Rounds    []E2ERound
}

// E2ERound is one run of each producer.
type E2ERound struct {
	// Agent: slot → agent → publish.Client → HTTP (end to end).
	Agent time.Duration
	// Client: publish.Client alone, replaying the decoded envelopes.
	Client time.Duration
	// Plain: a keep-alive net/http client POSTing the same bodies.
	Plain time.Duration
	Order string
	// CPU time of this process (producer and the in-process server) per
	// producer, and of the walsender for the agent.
	AgentCPU, ClientCPU, PlainCPU time.Duration
	WalsenderCPU                  time.Duration
}

func (e *env) e2e(ctx context.Context) (*E2EResult, error) {
	url, conn, err := e.openDB(ctx, "bench_e2e")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	const pub = "bench_e2e"
	agentSlot := func(k int) string { return fmt.Sprintf("e2e_agent_%d", k) }
	rounds := e.opts.Rounds
	slots := []string{"e2e_capture"}
	for k := 1; k <= rounds; k++ {
		slots = append(slots, agentSlot(k))
	}
	if err := watchThenSlots(ctx, conn, pub, "orders", slots...); err != nil {
		return nil, err
	}
	n := e.opts.E2ERows
	e.logf("generating %d row changes", n)
	if _, err := generate(ctx, conn, 0, n, 1000); err != nil {
		return nil, err
	}

	// The envelopes the agent produces, for the producers that replay them.
	events, err := e.captureEvents(ctx, url, conn, "e2e_capture", pub, n)
	if err != nil {
		return nil, err
	}
	res := &E2EResult{Rows: n}
	total := 0
	for _, ev := range events {
		total += len(ev.Body)
	}
	res.BodyBytes = total / len(events)

	spine := newInstantSpine()
	defer spine.Close()
	for k := 1; k <= rounds; k++ {
		var r E2ERound
		runs := map[byte]func() error{
			'A': func() (err error) {
				profile := ""
				if k == 1 && e.opts.CPUProfile != "" {
					profile = e.opts.CPUProfile + "-e2e.pprof"
				}
				ws, err := e.sampleWalsender(ctx, agentSlot(k))
				if err != nil {
					return err
				}
				cpu0 := selfCPU()
				r.Agent, err = e.e2eAgent(ctx, url, agentSlot(k), pub, spine, n, profile)
				r.AgentCPU, r.WalsenderCPU = selfCPU()-cpu0, ws.stop()
				return err
			},
			'C': func() (err error) {
				cpu0 := selfCPU()
				r.Client, err = e2eClient(ctx, spine, events)
				r.ClientCPU = selfCPU() - cpu0
				return err
			},
			'P': func() (err error) {
				cpu0 := selfCPU()
				r.Plain, err = e2ePlain(ctx, spine, events)
				r.PlainCPU = selfCPU() - cpu0
				return err
			},
		}
		r.Order = [...]string{"ACP", "CPA", "PAC"}[(k-1)%3]
		for i := 0; i < len(r.Order); i++ {
			before := spine.Changes()
			if err := runs[r.Order[i]](); err != nil {
				return nil, err
			}
			if got := spine.Changes() - before; got != int64(n) {
				return nil, fmt.Errorf("producer %c POSTed %d events, want %d", r.Order[i], got, n)
			}
		}
		res.Rounds = append(res.Rounds, r)
		e.logf("round %d: agent→HTTP %.0f ev/s, publish.Client %.0f ev/s, net/http %.0f ev/s",
			k, rate(n, r.Agent), rate(n, r.Client), rate(n, r.Plain))
		if err := dropSlot(ctx, conn, agentSlot(k)); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// newInstantSpine is a spine stand-in that answers at once: what the
// producers themselves cost, with no append time to hide it.
func newInstantSpine() *netsim.Spine { return netsim.NewSpine(0) }

func newSpineClient(spine *netsim.Spine) (*publish.Client, error) {
	return publish.NewClient(publish.ClientConfig{URL: spine.URL, Timeout: 30 * time.Second})
}

// e2eAgent times the agent draining slot into the spine through
// publish.Client, from its start until n events were accepted.
func (e *env) e2eAgent(ctx context.Context, url, slot, pub string, spine *netsim.Spine, n int, profile string) (time.Duration, error) {
	client, err := newSpineClient(spine)
	if err != nil {
		return 0, err
	}
	sink := newCountSink(client, n)
	stopProfile, err := startProfile(profile)
	if err != nil {
		return 0, err
	}
	defer stopProfile()
	start := time.Now()
	ra, err := e.startAgent(ctx, url, slot, pub, sink, client, time.Second)
	if err != nil {
		return 0, err
	}
	werr := ra.wait(sink.done, 30*time.Minute, func() string { return fmt.Sprintf("%d of %d events", sink.n.Load(), n) })
	serr := ra.stop()
	if werr != nil {
		return 0, werr
	}
	return sink.doneAt.Sub(start), serr
}

// e2eClient times a fresh publish.Client delivering events one at a time.
func e2eClient(ctx context.Context, spine *netsim.Spine, events []*envelope.Event) (time.Duration, error) {
	client, err := newSpineClient(spine)
	if err != nil {
		return 0, err
	}
	client.SetIdentity("bench", "bench")
	start := time.Now()
	for _, ev := range events {
		if err := client.Publish(ctx, ev); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// e2ePlain times the simplest sequential producer: a keep-alive net/http
// client POSTing each body and reading the answer.
func e2ePlain(ctx context.Context, spine *netsim.Spine, events []*envelope.Event) (time.Duration, error) {
	return sequentialPost(ctx, spine.URL, events)
}
