package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// jsAgent starts the harness's agent with a JetStream destination.
func (h *harness) jsAgent(urls []string) {
	h.t.Helper()
	h.startAgentWith(func(cfg *agent.Config) {
		js, err := natsjs.Connect(natsjs.Config{URLs: urls, MinBackoff: 10 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			AckTimeout: 2 * time.Second, Logger: cfg.Logger})
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(js.Close)
		cfg.Sink, cfg.Spine = js, js
	})
}

// streamEvent is one message of the stream, as a consumer reads it.
type streamEvent struct {
	seq   uint64
	event chain.Event
	key   string
	op    string
	id    string
	raw   []byte
}

// readStream reads the whole stream and checks its chain; a read that
// fails while the cluster elects its leaders is started over.
func readStream(t *testing.T, urls []string) []streamEvent {
	t.Helper()
	c, err := natsjs.Connect(natsjs.Config{URLs: urls, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
	for {
		evs, err := readStreamOnce(t, c)
		if err == nil {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("reading the stream: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readStreamOnce(t *testing.T, c *natsjs.Client) ([]streamEvent, error) {
	var out []streamEvent
	prev := chain.Genesis
	err := c.Scan(context.Background(), 1, func(seq uint64, data []byte) {
		e, err := natsjs.Parse(seq, data)
		if err != nil {
			t.Errorf("message %d is not a chained event: %v", seq, err)
			return
		}
		if e.PrevHash != prev {
			t.Errorf("message %d links to %s, want %s", seq, e.PrevHash, prev)
		}
		prev = e.Hash
		meta, _ := e.Payload["metadata"].(map[string]any)
		row, _ := e.Payload["new"].(map[string]any)
		out = append(out, streamEvent{seq: seq, event: e, key: fmt.Sprint(meta["idempotency_key"]),
			op: fmt.Sprint(e.Payload["operation"]), id: fmt.Sprint(row["id"]), raw: append([]byte(nil), data...)})
	})
	return out, err
}

// TestJetStreamDestination: the agent delivers into a three-replica
// JetStream stream while it is stopped and started again and while the
// stream's leader is stopped: every committed row once, in commit order,
// each message the spine's GovernanceEvent, chained, and the trail's KEY
// and SEAL events with it, the seals verifying under the agent's key.
func TestJetStreamDestination(t *testing.T) {
	h := newHarness(t)
	cl := natstest.Start(t, 3)
	h.exec(`CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric)`)
	h.watch("acct", "other", "ledger")
	h.jsAgent(cl.URLs())

	const txns = 400
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range txns {
			if _, err := h.conn.Exec(context.Background(), `INSERT INTO acct VALUES ($1, 'o', $2), ($3, 'o', 1)`, 2*i, i, 2*i+1); err != nil {
				t.Errorf("insert: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for round := range 3 {
		time.Sleep(300 * time.Millisecond)
		h.stopAgent()
		time.Sleep(100 * time.Millisecond)
		h.jsAgent(cl.URLs())
		if round == 1 {
			leader := cl.WaitStreamLeader(natsjs.DefaultStream, 10*time.Second)
			cl.Stop(leader)
			time.Sleep(time.Second)
			cl.Restart(leader)
		}
	}
	wg.Wait()
	h.exec(`UPDATE acct SET balance = -1 WHERE id = 0`)

	var evs []streamEvent
	deadline := time.Now().Add(raceSlowdown * 60 * time.Second)
	for {
		// The UPDATE is the last change; a SEAL may follow it.
		evs = readStream(t, cl.URLs())
		if strings.Contains(opsOf(evs), envelope.OpUpdate) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d messages, the last UPDATE not among them", len(evs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.stopAgent()
	time.Sleep(500 * time.Millisecond) // the final seal
	evs = readStream(t, cl.URLs())

	var ids []string
	keys := map[string]int{}
	var seals, keyEvents int
	for _, e := range evs {
		keys[e.key]++
		if keys[e.key] > 1 {
			t.Errorf("key %s stored twice (seq %d)", e.key, e.seq)
		}
		switch {
		case e.op == envelope.OpInsert:
			ids = append(ids, e.id)
		case e.op == trail.OpSeal:
			if _, ok := trail.CheckSeal(e.raw, h.key.Public()); !ok {
				t.Errorf("seal at %d does not verify under the agent's key", e.seq)
			}
			seals++
		case e.op == trail.OpKey:
			keyEvents++
		}
	}
	if len(ids) != 2*txns {
		t.Fatalf("the stream holds %d INSERTs, want %d", len(ids), 2*txns)
	}
	for i, id := range ids {
		if id != fmt.Sprint(i) {
			t.Fatalf("INSERT %d is row %s: not in commit order", i, id)
		}
	}
	if seals == 0 || keyEvents == 0 {
		t.Errorf("the stream holds %d seals verifying under the agent's key and %d KEY events, want both", seals, keyEvents)
	}
	var sample map[string]any
	if err := json.Unmarshal(evs[len(evs)-1].raw, &sample); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"event_id", "timestamp", "kind", "source", "payload", "prev_hash", "hash"} {
		if _, ok := sample[f]; !ok {
			t.Errorf("a message lacks the GovernanceEvent field %s", f)
		}
	}
}

// TestJetStreamHistoryLostIsAGap: the agent's stream deleted while the
// agent runs, or while it is stopped (and made again empty by the next
// run), lost the trail it held: a capture gap naming what was lost, as with
// a spine that lost its history.
func TestJetStreamHistoryLostIsAGap(t *testing.T) {
	for _, running := range []bool{true, false} {
		t.Run(fmt.Sprintf("running=%v", running), func(t *testing.T) {
			h := newHarness(t)
			cl := natstest.Start(t, 1)
			h.exec(`CREATE TABLE t1 (id int PRIMARY KEY)`)
			h.watch("t1", "other", "s")
			h.jsAgent(cl.URLs())
			h.exec(`INSERT INTO t1 SELECT generate_series(1, 10)`)
			deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
			for !strings.Contains(opsOf(readStream(t, cl.URLs())), trail.OpSeal) {
				if time.Now().After(deadline) {
					t.Fatal("no SEAL in the stream")
				}
				time.Sleep(50 * time.Millisecond)
			}
			nc, err := nats.Connect(cl.URLs()[0])
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			if !running {
				h.stopAgent()
			}
			if err := js.DeleteStream(context.Background(), natsjs.DefaultStream); err != nil {
				t.Fatal(err)
			}
			if running {
				h.exec(`INSERT INTO t1 VALUES (11)`)
			} else {
				h.jsAgent(cl.URLs())
			}
			h.expectGapStop(capture.ReasonSpineHistoryLost)
		})
	}
}

func opsOf(evs []streamEvent) string {
	var ops []string
	for _, e := range evs {
		ops = append(ops, e.op)
	}
	return strings.Join(ops, " ")
}
