package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/natstest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
)

// streamOps lists the operations of the stream's chained messages.
func streamOps(t *testing.T, urls []string) []string {
	t.Helper()
	c, err := natsjs.Connect(natsjs.Config{URLs: urls, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ops []string
	err = c.Scan(context.Background(), 1, func(seq uint64, data []byte) {
		if e, err := natsjs.Parse(seq, data); err == nil {
			op, _ := e.Payload["operation"].(string)
			ops = append(ops, op)
		}
	})
	if err != nil {
		t.Logf("reading the stream: %v", err)
	}
	return ops
}

// TestJetStreamRunAndVerify: run delivers into a JetStream cluster, and
// verify reads the same trail from it as from the spine: a clean trail
// passes with its checkpoint, and a message another writer put on the
// stream's subject fails, named.
func TestJetStreamRunAndVerify(t *testing.T) {
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 3)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": "", "PGAUDIT_NATS_URL": strings.Join(cl.URLs(), ",")}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)`)
	mustRun(t, env, "watch", "ledger", "--kind", "other", "--source", "books")
	stop, log := startAgentLog(t, env)
	exec(t, dsn, `INSERT INTO ledger SELECT g, g * 2.5 FROM generate_series(1, 20) g`)
	exec(t, dsn, `UPDATE ledger SET amount = 0 WHERE id < 5`)
	if got := mustRun(t, env, "checkpoint", "ledger"); !strings.Contains(got, "20 rows") {
		t.Fatalf("checkpoint printed %q", got)
	}
	waitFor(t, "the CHECKPOINT event in the stream", 30*time.Second, func() bool {
		ops := streamOps(t, cl.URLs())
		return len(ops) > 0 && strings.Contains(strings.Join(ops, " "), "CHECKPOINT")
	})
	stop()
	if !strings.Contains(log.String(), "created the JetStream stream") {
		t.Errorf("run did not say it created the stream:\n%s", log.String())
	}

	got, _, err := run(t, env, "verify")
	if err != nil || !strings.Contains(got, "PASS  faithfulness: 1 checkpoints match") {
		t.Fatalf("verify of a clean JetStream trail: %v\n%s", err, got)
	}
	if got := mustRun(t, env, "status"); !strings.Contains(got, "JetStream stream PGAUDIT_CDC (subject pgaudit.cdc): ") || !strings.Contains(got, "3 replicas, leader n") {
		t.Errorf("status does not show the stream:\n%s", got)
	}

	nc, err := nats.Connect(cl.URLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(context.Background(), natsjs.DefaultSubject, []byte(`{"kind":"other","source":"books","payload":{"operation":"DELETE"}}`)); err != nil {
		t.Fatal(err)
	}
	got, _, err = run(t, env, "verify", "--json")
	if code := exitCode(err); code != 1 || !strings.Contains(got, "is not an event of the chain") {
		t.Fatalf("verify with another writer's message: exit %d (%v), want 1 naming it:\n%s", code, err, got)
	}
	var rep struct{ Failures []struct{ Detail string } }
	if err := json.Unmarshal([]byte(got), &rep); err != nil || len(rep.Failures) == 0 {
		t.Fatalf("verify --json: %v\n%s", err, got)
	}
}

// TestDoctorNamesWeakStream: doctor fails on a stream that could lose or
// rewrite the trail, naming each setting and its fix, and run refuses it
// (exit 2) before streaming anything.
func TestDoctorNamesWeakStream(t *testing.T) {
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 1)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": "", "PGAUDIT_NATS_URL": cl.URLs()[0]}
	got, _, err := run(t, env, "doctor")
	if err != nil || !strings.Contains(got, "does not exist yet: run creates it") {
		t.Fatalf("doctor before the stream exists: %v\n%s", err, got)
	}
	nc, err := nats.Connect(cl.URLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: natsjs.DefaultStream,
		Subjects: []string{natsjs.DefaultSubject}, Storage: jetstream.FileStorage, DenyPurge: true}); err != nil {
		t.Fatal(err)
	}
	got, _, err = run(t, env, "doctor")
	if code := exitCode(err); code != 1 || !strings.Contains(got, "FAIL  nats stream deny_delete") || !strings.Contains(got, "fix: anyone with stream rights could delete") {
		t.Fatalf("doctor on a stream without deny_delete: exit %d, want 1 naming it:\n%s", code, got)
	}
	_, errOut, err := run(t, env, "run")
	if code := exitCode(err); code != 2 || !strings.Contains(err.Error(), "deny_delete is false") {
		t.Fatalf("run on a weak stream: exit %d (%v), want 2 naming deny_delete\n%s", code, err, errOut)
	}
}

// TestRelayIntoSpine: relay delivers the JetStream trail into the spine
// through a spine outage, faults after appends, and a relay stopped in the
// middle and started again: the spine holds every event of the stream once,
// in stream order, and verify passes on the spine's copy, checkpoint and
// seals included.
func TestRelayIntoSpine(t *testing.T) {
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 3)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": "", "PGAUDIT_NATS_URL": strings.Join(cl.URLs(), ",")}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)`)
	mustRun(t, env, "watch", "ledger", "--kind", "other", "--source", "books")
	stop := startAgent(t, env)
	for i := range 30 {
		exec(t, dsn, `INSERT INTO ledger SELECT g, g * 2.5 FROM generate_series($1::int, $1::int + 9) g`, i*10)
	}
	mustRun(t, env, "checkpoint", "ledger")
	waitFor(t, "the CHECKPOINT event in the stream", 30*time.Second, func() bool {
		return strings.Contains(strings.Join(streamOps(t, cl.URLs()), " "), "CHECKPOINT")
	})
	stop()
	want := streamOps(t, cl.URLs())

	relayEnv := map[string]string{"AUDIT_STREAM_URL": spine.URL()}
	relayFor := func(stopAfter int) error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := NewRootCmd()
		cmd.SetArgs([]string{"relay", "--batch", "50", "--audit-stream-url", spine.URL()})
		var out syncBuffer
		cmd.SetErr(&out)
		done := make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()
		deadline := time.Now().Add(60 * time.Second)
		for len(spine.Events()) < stopAfter && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		err := <-done
		if err != nil {
			t.Logf("relay output:\n%s", out.String())
		}
		return err
	}
	spine.SetDown(true)
	go func() { time.Sleep(time.Second); spine.SetDown(false) }()
	spine.FailNext(3, spinetest.FaultDropAfter)
	if err := relayFor(120); err != nil {
		t.Fatal(err)
	}
	spine.SetRandomFaults(0.05, 7, spinetest.FaultDropAfter, spinetest.FaultDropBefore)
	if err := relayFor(len(want)); err != nil {
		t.Fatal(err)
	}
	spine.SetRandomFaults(0, 0)
	var got []string
	for _, e := range spine.Events() {
		op, _ := e.Payload["operation"].(string)
		got = append(got, op)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("the spine holds %d events, want the stream's %d in the same order:\n got %v\nwant %v", len(got), len(want), got[max(0, len(got)-20):], want[max(0, len(want)-20):])
	}
	out, _, err := run(t, relayEnv, "verify", "--nats-url", "")
	if err != nil || !strings.Contains(out, "PASS  faithfulness: 1 checkpoints match") {
		t.Fatalf("verify of the relayed trail: %v\n%s", err, out)
	}
}

// TestDeadLetterRetryIntoJetStream: a dead letter kept while the trail went
// to the spine is retried into the stream, marked redelivered, once.
func TestDeadLetterRetryIntoJetStream(t *testing.T) {
	dsn := pgtest.DSN(t)
	cl := natstest.Start(t, 1)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": "", "PGAUDIT_NATS_URL": cl.URLs()[0]}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY)`)
	mustRun(t, env, "watch", "ledger", "--kind", "other", "--source", "books") // the schema
	pos := envelope.Position{CommitLSN: 0x1000, Seq: 1}
	ev := &envelope.Event{Pos: pos, Envelope: envelope.Envelope{Kind: "other", Source: "books",
		Timestamp: "2026-12-06T10:00:00+00:00", Table: "public.ledger", Operation: envelope.OpInsert,
		New: []byte(`{"id":1}`), CommitLSN: pos.CommitLSN, LSN: pos.CommitLSN, Key: envelope.Key("7301", "pgaudit_cdc", pos)}}
	ev.Finish()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := deadletters.New(conn, "pgaudit_cdc").Put(context.Background(), ev, 422, "unknown kind"); err != nil {
		t.Fatal(err)
	}
	if got := mustRun(t, env, "dead-letters", "retry", "--all"); !strings.Contains(got, "1 delivered, 0 refused again") {
		t.Fatalf("retry printed %q", got)
	}
	if got := mustRun(t, env, "dead-letters", "retry", "--all"); !strings.Contains(got, "0 delivered") {
		t.Fatalf("a second retry printed %q", got)
	}
	c, err := natsjs.Connect(natsjs.Config{URLs: cl.URLs(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stored []string
	if err := c.Scan(context.Background(), 1, func(seq uint64, data []byte) {
		e, err := natsjs.Parse(seq, data)
		if err != nil {
			t.Errorf("message %d: %v", seq, err)
			return
		}
		meta, _ := e.Payload["metadata"].(map[string]any)
		stored = append(stored, fmt.Sprint(meta["idempotency_key"], " redelivered=", meta["redelivered"]))
	}); err != nil {
		t.Fatal(err)
	}
	if want := ev.Key + " redelivered=true"; len(stored) != 1 || stored[0] != want {
		t.Fatalf("the stream holds %v, want [%s]", stored, want)
	}
}
