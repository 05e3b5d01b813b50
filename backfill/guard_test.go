package backfill_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// TestRowSecurityIsRefusedNotObeyed: a table owner's row-level security
// policy, forced on everyone but superusers, must neither hide rows from a
// backfill or a checkpoint run as another role nor run its expression with
// that role's rights: both stop and say how to read the whole table.
// Key values are compared as the domain's base type, so no domain CHECK
// runs as that role either.
func TestRowSecurityIsRefusedNotObeyed(t *testing.T) {
	ctx := context.Background()
	conn, dsn, oid := watched(t)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	role := "bf_guest_" + strings.ToLower(strings.NewReplacer("-", "_").Replace(db))
	ident := pgx.Identifier{role}.Sanitize()
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), "DROP OWNED BY "+ident+" CASCADE")
		_, _ = conn.Exec(context.Background(), "DROP ROLE "+ident)
	})
	// The policy's function notes every role it runs as.
	for _, sql := range []string{
		"CREATE ROLE " + ident + " LOGIN PASSWORD 'x' NOSUPERUSER REPLICATION",
		"GRANT USAGE, CREATE ON SCHEMA pgaudit_cdc TO " + ident,
		"GRANT ALL ON ALL TABLES IN SCHEMA pgaudit_cdc TO " + ident,
		"GRANT ALL ON ALL SEQUENCES IN SCHEMA pgaudit_cdc TO " + ident,
		"GRANT SELECT, UPDATE ON b TO " + ident,
		// As the agent's role, it owns the control table, whose own
		// row-level security does not restrict its owner.
		"ALTER TABLE pgaudit_cdc.control OWNER TO " + ident,
		"CREATE TABLE ran_as (who text)",
		"GRANT INSERT ON ran_as TO PUBLIC",
		`CREATE FUNCTION public.noted(id int) RETURNS bool LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO public.ran_as VALUES (current_user); RETURN id <= 10; END $$`,
		"ALTER TABLE b ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY",
		"CREATE POLICY hide ON b USING (public.noted(id))",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "x")
	guest := pgtest.Connect(t, u.String())

	_, err = backfill.Run(ctx, guest, oid, backfill.Options{ChunkSize: 10})
	if err == nil || !strings.Contains(err.Error(), "row-level security") || !strings.Contains(err.Error(), "BYPASSRLS") {
		t.Fatalf("backfill under a forced policy: got %v, want a refusal naming BYPASSRLS", err)
	}
	_, err = backfill.Checkpoint(ctx, guest, oid, backfill.CheckpointOptions{})
	if err == nil || !strings.Contains(err.Error(), "row-level security") {
		t.Fatalf("checkpoint under a forced policy: got %v, want a refusal", err)
	}
	var ran int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM ran_as").Scan(&ran); err != nil {
		t.Fatal(err)
	}
	if ran != 0 {
		t.Fatalf("the policy's expression ran %d times as the reading role", ran)
	}

	// With BYPASSRLS every row is read, and the session is as it was.
	if _, err := conn.Exec(ctx, "ALTER ROLE "+ident+" BYPASSRLS"); err != nil {
		t.Fatal(err)
	}
	p, err := backfill.Run(ctx, guest, oid, backfill.Options{ChunkSize: 10})
	if err != nil {
		t.Fatalf("backfill with BYPASSRLS: %v", err)
	}
	if p.Rows != 50 {
		t.Fatalf("backfill read %d rows, want all 50", p.Rows)
	}
	// A key whose domain's CHECK calls a function: resuming after a chunk
	// compares keys as the base type, so the CHECK never runs as the
	// reading role.
	for _, sql := range []string{
		"CREATE DOMAIN public.checked_id AS int CHECK (public.noted(VALUE))",
		"CREATE TABLE d (id public.checked_id PRIMARY KEY, v text)",
		"INSERT INTO d SELECT g, 'row ' || g FROM generate_series(1, 10) g",
		"GRANT SELECT, UPDATE ON d TO " + ident,
		"TRUNCATE ran_as",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := watches.NewRegistry(conn, pub, slot).Watch(ctx, watches.TableName{Schema: "public", Name: "d"}, "other", "backfill-test"); err != nil {
		t.Fatal(err)
	}
	var doid uint32
	if err := conn.QueryRow(ctx, `SELECT 'd'::regclass::oid`).Scan(&doid); err != nil {
		t.Fatal(err)
	}
	if p, err := backfill.Run(ctx, guest, doid, backfill.Options{ChunkSize: 3}); err != nil || p.Rows != 10 {
		t.Fatalf("backfill of d: %+v, %v; want 10 rows", p, err)
	}
	if _, err := backfill.Checkpoint(ctx, guest, doid, backfill.CheckpointOptions{ChunkRows: 3}); err != nil {
		t.Fatalf("checkpoint of d: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM ran_as").Scan(&ran); err != nil {
		t.Fatal(err)
	}
	if ran != 0 {
		t.Fatalf("the key domain's CHECK ran %d times as the reading role", ran)
	}

	var rs string
	if err := guest.QueryRow(ctx, "SELECT current_setting('row_security')").Scan(&rs); err != nil {
		t.Fatal(err)
	}
	if rs != "on" {
		t.Fatalf("after the backfill: row_security %q, want it reset", rs)
	}
}
