package agent_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// TestTableLifecycleWithoutEventTrigger: without the sql_drop event trigger
// (only a superuser can install it, and this agent's role is not one), the
// agent's housekeeping still ends the watch of a dropped table with exactly
// one DROP event, within a housekeeping interval, recorded by the
// agent's role. A new table of the same name is not audited.
func TestTableLifecycleWithoutEventTrigger(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	suffix := roleSuffix(t, h)
	owner, agentRole := "ledgerowner_"+suffix, "lpdrop_"+suffix
	h.ownerRole(owner)
	h.exec(`CREATE TABLE ledger (id int PRIMARY KEY, v text)`)
	h.exec(`ALTER TABLE ledger OWNER TO ` + owner)
	lp := h.roleConn(agentRole, `ALTER ROLE `+agentRole+` REPLICATION`, `GRANT CREATE ON DATABASE `+dbOf(t, h)+` TO `+agentRole,
		`GRANT `+owner+` TO `+agentRole)
	t.Cleanup(h.stopAgent) // before the role's clean-up drops what it owns
	if _, err := watches.NewRegistry(lp, testPub, testSlot).Watch(ctx, mustName(t, "ledger"), "other", "books"); err != nil {
		t.Fatalf("watch as %s: %v", agentRole, err)
	}
	// As a superuser would, in case a watch ever installed them anyway.
	h.exec(`DROP EVENT TRIGGER IF EXISTS ` + watches.DropTriggerName)
	h.exec(`DROP EVENT TRIGGER IF EXISTS ` + watches.EventTriggerName)
	var triggers int
	if err := h.conn.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger`).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if triggers != 0 {
		t.Fatalf("%d event triggers exist; this test is about a database without them", triggers)
	}

	u, err := url.Parse(h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(agentRole, "x")
	obs := h.observe()
	h.startAgentWith(func(c *agent.Config) {
		c.DatabaseURL = u.String()
		c.HousekeepingInterval = housekeepingInterval
	})
	h.exec(`INSERT INTO ledger VALUES (1, 'a')`)
	h.waitEvents(1, 30*time.Second)

	dropEvents := func() (n int) {
		for _, e := range h.spine.Events() {
			if e.Source == envelope.SelfAuditSource && field(t, e, "operation") == envelope.OpDrop {
				n++
			}
		}
		return n
	}
	h.exec(`DROP TABLE ledger`)
	dropped := time.Now()
	for dropEvents() == 0 {
		if time.Since(dropped) > housekeepingWait {
			t.Fatalf("no DROP event within %s of the drop; events:\n%s", housekeepingWait, dump(h.spine.Events()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("DROP event %s after the drop", time.Since(dropped).Round(time.Millisecond))

	// A new table of the same name is a new table: not audited.
	h.exec(`CREATE TABLE ledger (id int PRIMARY KEY, v text)`)
	h.exec(`INSERT INTO ledger VALUES (2, 'b')`)
	// More housekeeping rounds: they must not record the drop again.
	time.Sleep(5 * housekeepingInterval) // a round took under 1 s under -race too
	h.stopAgent()

	ops := sourceOps(t, h.spine.Events())
	want := []string{"pgaudit-cdc WATCH", "books INSERT", "pgaudit-cdc DROP"}
	if fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v:\n%s", ops, want, dump(h.spine.Events()))
	}
	if n := dropEvents(); n != 1 {
		t.Fatalf("%d DROP events, want exactly 1", n)
	}
	if ok, at, reason := h.spine.Verify(); !ok {
		t.Fatalf("spine chain invalid at %d: %s", at, reason)
	}
	drop := withoutTrail(h.spine.Events())[2]
	if field(t, drop, "previous", "table") != "public.ledger" || field(t, drop, "watch", "dropped_at") == nil ||
		field(t, drop, "watch", "active") != false {
		t.Fatalf("DROP event: %s", jsonOf(t, drop.Payload))
	}
	// Recorded by the agent's housekeeping (its session), not a trigger in
	// the dropping (superuser) session.
	if by := field(t, drop, "changed_by"); by != agentRole {
		t.Fatalf("DROP event changed_by %v, want the agent's role %s", by, agentRole)
	}
	obs.expectLog(t, 1, "level=WARN", "watched tables were dropped; their watches ended (DROP events)", "tables=public.ledger")

	entries, err := newRegistry(h).List(ctx, true)
	if err != nil || len(entries) != 1 || entries[0].Active || entries[0].DroppedAt == nil {
		t.Fatalf("list after the drop: %+v, %v; want one inactive, dropped watch", entries, err)
	}
	var active bool
	var droppedAt *time.Time
	if err := h.conn.QueryRow(ctx, `SELECT active, dropped_at FROM pgaudit_cdc.watches WHERE table_name = 'ledger'`).Scan(&active, &droppedAt); err != nil {
		t.Fatal(err)
	}
	if active || droppedAt == nil {
		t.Fatalf("registry row: active %v, dropped_at %v; want inactive and dropped", active, droppedAt)
	}
}
