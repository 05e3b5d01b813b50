package cli

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// TestVerifyCommand: checkpoint and verify through the CLI and the spine's
// HTTP API: a clean trail exits 0, a forged event exits 1 and is named,
// and verify without a spine is a usage error.
func TestVerifyCommand(t *testing.T) {
	dsn := pgtest.DSN(t)
	spine := spinetest.Start(t)
	env := map[string]string{"DATABASE_URL": dsn, "AUDIT_STREAM_URL": spine.URL()}
	exec(t, dsn, `CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)`)
	mustRun(t, env, "watch", "ledger", "--kind", "other", "--source", "books")

	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	cmd := NewRootCmd()
	cmd.SetArgs([]string{"run", "--status-interval", "100ms"})
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	exec(t, dsn, `INSERT INTO ledger SELECT g, g * 2.5 FROM generate_series(1, 20) g`)
	exec(t, dsn, `UPDATE ledger SET amount = 0 WHERE id < 5`)
	if got := mustRun(t, env, "checkpoint", "ledger"); !strings.Contains(got, "20 rows") {
		t.Fatalf("checkpoint printed %q", got)
	}
	waitFor(t, "the CHECKPOINT event", 30*time.Second, func() bool {
		for _, e := range spine.Events() {
			if e.Payload["operation"] == "CHECKPOINT" {
				return true
			}
		}
		return false
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}

	got, _, err := run(t, env, "verify")
	if err != nil || !strings.Contains(got, "PASS  faithfulness: 1 checkpoints match") {
		t.Fatalf("verify of a clean trail: %v\n%s", err, got)
	}
	resp, err := http.Post(spine.URL()+"/events", "application/json",
		strings.NewReader(`{"kind":"other","source":"books","payload":{"table":"public.ledger","operation":"DELETE","old":{"id":3}}}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("posting a forged event: %v %v", err, resp)
	}
	resp.Body.Close()
	got, _, err = run(t, env, "verify", "--json")
	if code := exitCode(err); code != 1 || !strings.Contains(got, "not sent by pgaudit-cdc") {
		t.Fatalf("verify with a forged event: exit %d, want 1 naming it:\n%s", code, got)
	}
	_, _, err = run(t, map[string]string{"AUDIT_STREAM_URL": ""}, "verify")
	if code := exitCode(err); code != 2 {
		t.Fatalf("verify without a spine: exit %d, want 2", code)
	}
}
