package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/netsim"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// NetworkResult is delivery to a spine across a network: the agent (slot →
// decode → pipelined publish.Client) through a delay proxy, against the
// same spine's own rate from a sequential client on loopback (issue 11).
type NetworkResult struct {
	Events  int           // events per agent run (Window1Events with a window of 1)
	Service time.Duration // the stand-in's time per append
	Window  int           // the agent's default window
	// Window1Events: the run with a window of 1 (today's one request at a
	// time) uses fewer events, it is slow by design.
	Window1Events int
	Cases         []NetworkCase // in run order within a round
	Rounds        []NetworkRound
}

// NetworkCase is one way of delivering.
type NetworkCase struct {
	Name   string
	RTT    time.Duration // added round trip; 0: loopback, no proxy
	Window int           // 0: the sequential client
	Events int
}

// NetworkRound is one run of every case: its duration, by case name.
type NetworkRound map[string]time.Duration

const seqLoopback = "sequential client, loopback"

// networkRTTs are the round trips the adaptive window is measured across.
var networkRTTs = []time.Duration{0, 500 * time.Microsecond, 2700 * time.Microsecond, 10 * time.Millisecond, 50 * time.Millisecond}

// adaptiveCase names the agent's run with its default (adaptive) window.
func adaptiveCase(rtt time.Duration) string {
	return fmt.Sprintf("agent, adaptive window, +%s RTT", rtt)
}

func (e *env) network(ctx context.Context) (*NetworkResult, error) {
	url, conn, err := e.openDB(ctx, "bench_network")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	n := e.opts.NetEvents
	res := &NetworkResult{Events: n, Service: 410 * time.Microsecond, Window: publish.DefaultMaxInFlight, Window1Events: max(n/10, 1)}
	res.Cases = append(res.Cases, NetworkCase{Name: seqLoopback, Events: n})
	for _, rtt := range networkRTTs {
		res.Cases = append(res.Cases, NetworkCase{Name: adaptiveCase(rtt), RTT: rtt, Window: res.Window, Events: n})
	}
	// Side by side: the fixed window of 32 the agent had before.
	for _, rtt := range []time.Duration{10 * time.Millisecond, 50 * time.Millisecond} {
		res.Cases = append(res.Cases, NetworkCase{Name: fmt.Sprintf("agent, window ≤ 32, +%s RTT", rtt), RTT: rtt, Window: 32, Events: n})
	}
	res.Cases = append(res.Cases, NetworkCase{Name: "agent, window 1, +2.7ms RTT", RTT: 2700 * time.Microsecond, Window: 1, Events: res.Window1Events})
	rounds := min(e.opts.Rounds, 3)

	// One slot per agent run, all created before the changes.
	const pub = "bench_network"
	slotOf := func(k, c int) string { return fmt.Sprintf("net_%d_%d", k, c) }
	slots := []string{"net_capture"}
	for k := 1; k <= rounds; k++ {
		for c := range res.Cases {
			if res.Cases[c].Window > 0 {
				slots = append(slots, slotOf(k, c))
			}
		}
	}
	if err := watchThenSlots(ctx, conn, pub, "orders", slots...); err != nil {
		return nil, err
	}
	e.logf("generating %d row changes", n)
	if _, err := generate(ctx, conn, 0, n, 100); err != nil {
		return nil, err
	}
	// The envelopes, for the sequential client.
	events, err := e.captureEvents(ctx, url, conn, "net_capture", pub, n)
	if err != nil {
		return nil, err
	}

	spine := netsim.NewSpine(res.Service)
	defer spine.Close()
	for k := 1; k <= rounds; k++ {
		round := NetworkRound{}
		for c, nc := range res.Cases {
			before := spine.Changes()
			var d time.Duration
			var err error
			if nc.Window == 0 {
				d, err = sequentialPost(ctx, spine.URL, events)
			} else {
				d, err = e.networkAgent(ctx, url, slotOf(k, c), pub, spine, nc)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", nc.Name, err)
			}
			if got := spine.Changes() - before; got < int64(nc.Events) {
				return nil, fmt.Errorf("%s: %d events appended, want %d", nc.Name, got, nc.Events)
			}
			round[nc.Name] = d
			e.logf("round %d: %-36s %6.0f events/s", k, nc.Name, rate(nc.Events, d))
			if nc.Window > 0 {
				if err := dropSlot(ctx, conn, slotOf(k, c)); err != nil {
					return nil, err
				}
			}
		}
		res.Rounds = append(res.Rounds, round)
	}
	return res, nil
}

// networkAgent times an agent delivering c.Events events from slot through
// a proxy adding c.RTT, from its start until the last was accepted.
func (e *env) networkAgent(ctx context.Context, dbURL, slot, pub string, spine *netsim.Spine, c NetworkCase) (time.Duration, error) {
	target := spine.URL
	if c.RTT > 0 {
		p, err := netsim.NewProxy(spine.Addr, c.RTT)
		if err != nil {
			return 0, err
		}
		defer p.Close()
		target = p.URL
	}
	client, err := publish.NewClient(publish.ClientConfig{URL: target, Timeout: 30 * time.Second, MaxInFlight: c.Window})
	if err != nil {
		return 0, err
	}
	sink := newCountSink(client, c.Events)
	start := time.Now()
	ra, err := e.startAgent(ctx, dbURL, slot, pub, sink, client, time.Second)
	if err != nil {
		return 0, err
	}
	werr := ra.wait(sink.done, 30*time.Minute, func() string { return fmt.Sprintf("%d of %d events", sink.n.Load(), c.Events) })
	serr := ra.stop()
	if werr != nil {
		return 0, werr
	}
	return sink.doneAt.Sub(start), serr
}

// sequentialPost is the spine's own sequential rate: a keep-alive net/http
// client POSTing each body and reading the answer, on loopback.
func sequentialPost(ctx context.Context, spineURL string, events []*envelope.Event) (time.Duration, error) {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer hc.CloseIdleConnections()
	start := time.Now()
	for _, ev := range events {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, spineURL+"/events", bytes.NewReader(ev.Body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
	}
	return time.Since(start), nil
}
