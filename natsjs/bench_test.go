package natsjs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// benchEvents are n change events of about size bytes each.
func benchEvents(n, size int) []*envelope.Event {
	pad := make([]byte, max(0, size-300))
	for i := range pad {
		pad[i] = 'x'
	}
	out := make([]*envelope.Event, n)
	for i := range n {
		pos := envelope.Position{CommitLSN: pgoutput.LSN(0x1000 + 0x100*i), Seq: 1}
		ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{
			Kind: "other", Source: "bench", Timestamp: "2026-12-06T10:00:00+00:00",
			Table: "public.t", Operation: envelope.OpInsert, New: fmt.Appendf(nil, `{"id":%d,"v":"%s"}`, i, pad),
			CommitLSN: pos.CommitLSN, LSN: pos.CommitLSN, Key: envelope.Key("7301", "slot", pos),
		}}
		ev.Finish()
		out[i] = ev
	}
	return out
}

// BenchmarkDeliver is the agent's delivery into a three-replica stream on
// an in-process loopback cluster, side by side with BenchmarkAsyncPublish,
// the same messages published the way `nats bench js pub --async` does
// (a window of unacknowledged messages, no expected sequence, no chain).
func BenchmarkDeliver(b *testing.B) {
	urls := benchCluster(b)
	c, err := Connect(Config{URLs: urls})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetIdentity("7301", "slot")
	evs := benchEvents(b.N, 500)
	ctx := context.Background()
	b.SetBytes(int64(len(Build(evs[0], Link{Hash: "0"}).Data)))
	b.ResetTimer()
	for from := 0; from < len(evs); from += 2048 {
		if err := c.PublishBatch(ctx, evs[from:min(from+2048, len(evs))], func(int, error) {}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAsyncPublish(b *testing.B) {
	nc, err := nats.Connect(strings.Join(benchCluster(b), ","))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(DefaultMaxInFlight))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, Want{Stream: DefaultStream, Subject: DefaultSubject, Replicas: 3, Duplicates: DefaultDuplicates}.Config()); err != nil {
		b.Fatal(err)
	}
	evs := benchEvents(b.N, 500)
	msgs := make([][]byte, len(evs))
	for i, ev := range evs {
		msgs[i] = Build(ev, Link{Seq: uint64(i), Hash: "0"}).Data
	}
	b.SetBytes(int64(len(msgs[0])))
	b.ResetTimer()
	for i, m := range msgs {
		if _, err := js.PublishAsync(DefaultSubject, m, jetstream.WithMsgID(evs[i].Key)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("acknowledgements did not come")
	}
}

// benchCluster is the cluster a benchmark delivers into, its stream
// deleted first: PGAUDIT_BENCH_NATS_URL (servers of their own, e.g. for a
// side-by-side run with natscli's nats bench), else three in-process
// servers.
func benchCluster(b *testing.B) []string {
	b.Helper()
	env := os.Getenv("PGAUDIT_BENCH_NATS_URL")
	if env == "" {
		return natstest.Start(b, 3).URLs()
	}
	nc, err := nats.Connect(env)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := js.DeleteStream(context.Background(), DefaultStream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		b.Fatal(err)
	}
	return strings.Split(env, ",")
}
