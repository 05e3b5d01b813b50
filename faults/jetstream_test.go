package faults

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
)

// streamStore reads a JetStream trail back as the spine double's events,
// checking its chain on the way.
type streamStore struct {
	t    *testing.T
	urls []string

	mu     sync.Mutex
	events []spinetest.Event
	broken int64
	reason string
}

func (s *streamStore) read() {
	c, err := natsjs.Connect(natsjs.Config{URLs: s.urls, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	var evs []spinetest.Event
	var broken int64
	var reason string
	prev := chain.Genesis
	err = c.Scan(context.Background(), 1, func(seq uint64, data []byte) {
		e, err := natsjs.Parse(seq, data)
		if err != nil {
			if broken == 0 {
				broken, reason = int64(seq), err.Error()
			}
			return
		}
		if e.PrevHash != prev && broken == 0 {
			broken, reason = e.EventID, "prev_hash does not link"
		}
		prev = e.Hash
		evs = append(evs, spinetest.Event{EventID: e.EventID, Timestamp: e.Timestamp, Kind: e.Kind, Source: e.Source,
			Payload: e.Payload, PrevHash: e.PrevHash, Hash: e.Hash})
	})
	if err != nil {
		return // the cluster may be electing; the caller reads again
	}
	s.mu.Lock()
	s.events, s.broken, s.reason = evs, broken, reason
	s.mu.Unlock()
}

// Events reads the stream again and returns its events, the trail's own
// included.
func (s *streamStore) Events() []spinetest.Event {
	s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events
}

func (s *streamStore) Verify() (bool, int64, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.broken == 0, s.broken, s.reason
}

// TestKillNineCyclesJetStream: the agent killed with kill -9 at random
// moments under load, delivering into a three-replica JetStream stream
// whose leader is stopped once in the middle and one of whose servers is
// then gone for good: every change once, in commit order, in one chain.
func TestKillNineCyclesJetStream(t *testing.T) {
	cycles := envInt("PGAUDIT_FAULT_CYCLES", 6)
	rows := envInt("PGAUDIT_FAULT_ROWS", 1500)
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 3)
	url := strings.Join(cl.URLs(), ",")
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	rng := rand.New(rand.NewPCG(5, 6))
	killCycles(t, w, cycles, rows, rng, nil, func() *agentProc { return startAgentProc(t, dsn, url) }, func(c int) {
		switch c {
		case cycles / 3:
			leader := cl.WaitStreamLeader(natsjs.DefaultStream, 30*time.Second)
			cl.Stop(leader)
			t.Logf("cycle %d: stopped the stream leader n%d for a second", c, leader+1)
			time.Sleep(time.Second)
			cl.Restart(leader)
		case 2 * cycles / 3:
			gone := (cl.WaitStreamLeader(natsjs.DefaultStream, 30*time.Second) + 1) % 3
			cl.Stop(gone)
			t.Logf("cycle %d: stopped n%d for good", c, gone+1)
		}
	})
	p := startAgentProc(t, dsn, url)
	s := &streamStore{t: t, urls: cl.URLs()}
	waitDrained(t, s, w.changes(), 3*time.Minute, p)
	p.terminate(t)
	verify(t, w, s)
	t.Logf("kill -9 cycles: %d into JetStream", cycles)
}

// TestRelayKillNine: the relay killed with kill -9 while the spine is
// down, and then at random moments while it delivers: the spine ends up
// with every change of the JetStream trail once, in commit order.
func TestRelayKillNine(t *testing.T) {
	cycles := envInt("PGAUDIT_FAULT_CYCLES", 6)
	rows := envInt("PGAUDIT_FAULT_ROWS", 1500)
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 3)
	url := strings.Join(cl.URLs(), ",")
	spine := spinetest.Start(t)
	w := setupWorkload(t, dsn)
	watch(t, dsn)
	ctx := context.Background()
	p := startAgentProc(t, dsn, url)
	// A relay started after one was killed waits the settle time (2 s
	// here) before its first read-back: the killed one's requests may
	// still land.
	const settle = 2 * time.Second
	relay := func() *agentProc {
		return startProc(t, "relay", "--nats-url", url, "--audit-stream-url", spine.URL(), "--batch", "100",
			"--log-format", "json", "--spine-timeout", settle.String())
	}
	// The spine is down while the trail grows and relays die.
	spine.SetDown(true)
	killedWhileDown := false
	for w.changes() < rows {
		if _, err := w.step(ctx); err != nil {
			t.Fatalf("workload: %v", err)
		}
		if w.changes() > rows/2 && !killedWhileDown {
			killedWhileDown = true
			r := relay()
			time.Sleep(300 * time.Millisecond)
			r.kill()
		}
	}
	s := &streamStore{t: t, urls: cl.URLs()}
	waitDrained(t, s, w.changes(), 2*time.Minute, p)
	p.terminate(t)
	spine.SetDown(false)
	// Killed while the spine still appends its request (an ASGI server
	// finishes a request whose client left): the next relay finds those
	// events in the spine instead of sending them again.
	killWhileTheSpineAppends(t, spine, settle/2, relay)
	rng := rand.New(rand.NewPCG(7, 8))
	for c := range cycles {
		r := relay()
		// Killed while it delivers, after its wait for the one before.
		time.Sleep(settle + time.Duration(100+rng.IntN(500))*time.Millisecond)
		r.kill()
		if c == 0 && !strings.Contains(r.logs(), "its first read-back waits for the requests it may have left in flight") {
			t.Errorf("the relay after a killed one did not say it waits for its requests\n%s", r.logs())
		}
	}
	r := relay()
	stored := len(s.Events())
	deadline := time.Now().Add(2 * time.Minute)
	for len(spine.Events()) < stored && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // anything extra would be a duplicate
	r.terminate(t)
	if got := len(spine.Events()); got != stored {
		t.Errorf("the spine holds %d events, the stream %d", got, stored)
	}
	verify(t, w, spine)
	t.Logf("relay kill -9: 1 while the spine was down, 1 while the spine appended its request, %d while it delivered", cycles)
}
