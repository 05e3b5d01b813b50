package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// TestPublicationAndSlotByVersion checks what pgaudit-cdc makes of each
// PostgreSQL version: a failover slot from 17 on, and from 18 on a
// publication that publishes stored generated columns, also when it was
// made without (an earlier pgaudit-cdc, or a server upgraded to 18), in
// which case PostgreSQL 18 refuses UPDATE and DELETE on a watched table with
// a stored generated column until the agent sets the option.
func TestPublicationAndSlotByVersion(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	version := pgtest.ServerVersionNum(t)
	h.exec(`CREATE TABLE priced (id int PRIMARY KEY, price numeric, qty int,
		total numeric GENERATED ALWAYS AS (price * qty) STORED)`)
	h.exec(`INSERT INTO priced VALUES (1, 2, 3)`)
	h.watch("priced", "other", "versions")

	info, err := replication.LookupSlot(ctx, h.conn, testSlot)
	if err != nil || !info.Exists {
		t.Fatalf("slot after watch: %+v, %v", info, err)
	}
	if want := version >= 170000; info.Failover != want {
		t.Errorf("PostgreSQL %d: slot failover = %v, want %v", version, info.Failover, want)
	}
	if version < 180000 {
		h.startAgent()
		h.exec(`UPDATE priced SET qty = 4`)
		evs := h.expectExactly(1, 300*time.Millisecond)
		if got := jsonOf(t, field(t, evs[0], "new")); got != `{"id":1,"price":"2","qty":4}` {
			t.Errorf("PostgreSQL %d: got new %s, want no generated column", version, got)
		}
		return
	}

	var gencols string
	if err := h.conn.QueryRow(ctx, `SELECT pubgencols::text FROM pg_publication WHERE pubname = $1`, testPub).Scan(&gencols); err != nil {
		t.Fatal(err)
	}
	if gencols != "s" {
		t.Errorf("PostgreSQL %d: publication pubgencols = %q, want s (stored)", version, gencols)
	}
	// A publication made without the option: the application's UPDATE fails.
	h.exec(`ALTER PUBLICATION ` + testPub + ` SET (publish_generated_columns = none)`)
	_, err = h.conn.Exec(ctx, `UPDATE priced SET qty = 4`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InvalidColumnReference {
		t.Fatalf("UPDATE of a REPLICA IDENTITY FULL table with an unpublished generated column on %d: got %v, want SQLSTATE 42P10", version, err)
	}
	// The agent sets it again when it starts.
	h.startAgent()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = h.conn.Exec(ctx, `UPDATE priced SET qty = 4`)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("UPDATE after the agent started: %v", err)
	}
	evs := h.expectExactly(1, 300*time.Millisecond)
	if got := jsonOf(t, field(t, evs[0], "old")); got != `{"id":1,"price":"2","qty":3,"total":"6"}` {
		t.Errorf("old: got %s, want the stored generated column", got)
	}
	if got := jsonOf(t, field(t, evs[0], "new")); got != `{"id":1,"price":"2","qty":4,"total":"8"}` {
		t.Errorf("new: got %s, want the stored generated column", got)
	}
}

// TestWatchRefusesVirtualGeneratedColumns: on PostgreSQL 18 a virtual
// generated column cannot be published, and REPLICA IDENTITY FULL would make
// the table refuse UPDATE and DELETE: watch refuses, naming the column and
// the fix, and changes nothing; excluding the column works.
func TestWatchRefusesVirtualGeneratedColumns(t *testing.T) {
	h := newHarness(t)
	if v := pgtest.ServerVersionNum(t); v < 180000 {
		t.Skipf("PostgreSQL %d has no virtual generated columns (18+)", v)
	}
	h.exec(`CREATE TABLE vpriced (id int PRIMARY KEY, price numeric, qty int,
		total numeric GENERATED ALWAYS AS (price * qty) VIRTUAL)`)
	_, err := newRegistry(h).Watch(context.Background(), mustName(t, "vpriced"), "other", "s")
	if err == nil || !strings.Contains(err.Error(), "virtual generated columns (total)") || !strings.Contains(err.Error(), "STORED") {
		t.Fatalf("watch of a table with a virtual generated column: got %v", err)
	}
	h.exec(`UPDATE vpriced SET qty = 1`) // still writable: nothing was changed
	if _, err := newRegistry(h).Watch(context.Background(), mustName(t, "vpriced"), "other", "s",
		watches.Options{ExcludeColumns: []string{"total"}}); err != nil {
		t.Fatalf("watch excluding the virtual column: %v", err)
	}
	h.exec(`UPDATE vpriced SET qty = 2`)
}
