package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
)

// startMisconfigured starts a throwaway cluster of its own with settings.
func startMisconfigured(t *testing.T, settings ...string) string {
	t.Helper()
	pgtest.Needed(t)
	c, err := embedded.StartLocalWith(context.Background(), settings...)
	if err != nil {
		t.Fatalf("starting a cluster with %v: %v", settings, err)
	}
	t.Cleanup(c.Shutdown)
	return c.DatabaseURL("postgres")
}

func TestDoctorOnMisconfiguredClusters(t *testing.T) {
	if embedded.ExternalOverride() {
		t.Log("PGAUDIT_TEST_DATABASE_URL is set: misconfigured clusters are still started locally")
	}
	tests := []struct {
		name     string
		settings []string
		setup    string
		want     []string
	}{
		{"wal_level replica", []string{"wal_level=replica", "max_wal_senders=4"}, "",
			[]string{"FAIL  wal_level", "wal_level = logical", "rds.logical_replication = 1", "cloudsql.logical_decoding = on", "Azure"}},
		{"no free slots", []string{"max_replication_slots=1"}, "SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')",
			[]string{"FAIL  replication slots", "1 of 1 used", "raise max_replication_slots"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dsn := startMisconfigured(t, tt.settings...)
			if tt.setup != "" {
				conn, err := pgx.Connect(context.Background(), dsn)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := conn.Exec(context.Background(), tt.setup); err != nil {
					t.Fatal(err)
				}
				conn.Close(context.Background())
			}
			out, _, err := run(t, map[string]string{"DATABASE_URL": dsn}, "doctor")
			if exitCode(err) != 1 {
				t.Fatalf("got exit %d, want 1\n%s", exitCode(err), out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("doctor output lacks %q:\n%s", w, out)
				}
			}
			if tt.name == "wal_level replica" {
				// run refuses with the same sentence, as a configuration error.
				_, _, err := run(t, map[string]string{"DATABASE_URL": dsn}, "run")
				if exitCode(err) != 2 || !strings.Contains(err.Error(), "wal_level = logical") {
					t.Errorf("run: got exit %d %v, want 2 naming the fix", exitCode(err), err)
				}
			}
		})
	}
}
