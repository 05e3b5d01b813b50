package preflight_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
)

// failNth makes the query numbered fail (counting from 1 since the counter
// was reset) fail with context.Canceled before it is sent; the connection
// stays usable for the others.
type failNth struct {
	n, fail atomic.Int64
}

func (f *failNth) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	if f.n.Add(1) == f.fail.Load() {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return ctx
	}
	return ctx
}

func (f *failNth) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestFailedQueryIsReported: whichever of doctor's queries fails, the
// failure shows in a result (a check that could not be made, with the
// error), never as a silently wrong value such as "0 of 0 used".
func TestFailedQueryIsReported(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	setup := pgtest.Connect(t, dsn)
	if _, err := migrations.Apply(ctx, setup); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	tracer := &failNth{}
	cfg.Tracer = tracer
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	o := preflight.Options{Slot: "pgaudit_cdc", Publication: "pgaudit_cdc"}

	tracer.n.Store(0)
	rs := preflight.Run(ctx, conn, o)
	queries := tracer.n.Load()
	for _, r := range rs {
		if strings.Contains(r.Detail, "could not be checked") {
			t.Fatalf("undisturbed run: %+v", r)
		}
	}
	if queries < 10 {
		t.Fatalf("doctor made %d queries", queries)
	}
	for k := int64(1); k <= queries; k++ {
		tracer.n.Store(0)
		tracer.fail.Store(k)
		rs := preflight.Run(ctx, conn, o)
		reported := false
		for _, r := range rs {
			if strings.Contains(r.Detail, "context canceled") {
				reported = true
				if r.Status != preflight.Fail {
					t.Errorf("query %d failed: check %q is %s, want fail: %s", k, r.Name, r.Status, r.Detail)
				}
			}
			if strings.Contains(r.Detail, " of 0 ") {
				t.Errorf("query %d failed: check %q says %q", k, r.Name, r.Detail)
			}
		}
		if !reported {
			t.Errorf("query %d of %d failed, and no result says so: %+v", k, queries, rs)
		}
		if !preflight.Failed(rs) {
			t.Errorf("query %d failed, and doctor does not fail", k)
		}
	}
	tracer.fail.Store(0)
}
