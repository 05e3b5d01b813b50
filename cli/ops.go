package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Status is what `pgaudit-cdc status --json` prints.
type Status struct {
	Slot struct {
		Name              string `json:"name"`
		Exists            bool   `json:"exists"`
		AgentConnected    bool   `json:"agent_connected"`
		ActivePID         *int32 `json:"active_pid"`
		AgentAddress      string `json:"agent_address,omitempty"`
		ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
		RestartLSN        string `json:"restart_lsn,omitempty"`
		LagBytes          *int64 `json:"lag_bytes"`
		RetainedWALBytes  *int64 `json:"retained_wal_bytes"`
		WALStatus         string `json:"wal_status,omitempty"`
	} `json:"slot"`
	Publication struct {
		Name   string `json:"name"`
		Exists bool   `json:"exists"`
		Tables int    `json:"tables"`
	} `json:"publication"`
	Watches     []watchJSON `json:"watches"`
	DeadLetters int64       `json:"dead_letters"`
}

type watchJSON struct {
	Table  string    `json:"table"`
	Kind   string    `json:"kind"`
	Source string    `json:"source"`
	Since  time.Time `json:"since"`
}

func newStatusCmd(o *options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show slot, publication, confirmed LSN, lag, retained WAL, watches and dead letters",
		Example: "  pgaudit-cdc status\n  pgaudit-cdc status --json | jq .slot.lag_bytes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				st, err := readStatus(cmd.Context(), conn, o)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(st)
				}
				printStatus(cmd.OutOrStdout(), st)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func readStatus(ctx context.Context, conn *pgx.Conn, o *options) (*Status, error) {
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return nil, err
	}
	st := &Status{}
	st.Slot.Name, st.Publication.Name = o.slot, o.publication
	var confirmed, restart, walStatus, addr *string
	err := conn.QueryRow(ctx, `SELECT true, s.active, s.active_pid, s.confirmed_flush_lsn::text, s.restart_lsn::text,
			(pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - s.restart_lsn)::bigint,
			s.wal_status, host(r.client_addr)
		FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
		WHERE s.slot_name = $1`, o.slot).Scan(&st.Slot.Exists, &st.Slot.AgentConnected, &st.Slot.ActivePID,
		&confirmed, &restart, &st.Slot.LagBytes, &st.Slot.RetainedWALBytes, &walStatus, &addr)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reading the slot: %w", err)
	}
	st.Slot.ConfirmedFlushLSN, st.Slot.RestartLSN, st.Slot.WALStatus = deref(confirmed), deref(restart), deref(walStatus)
	if addr != nil {
		st.Slot.AgentAddress = *addr
	} else if st.Slot.AgentConnected {
		st.Slot.AgentAddress = "local socket"
	}
	err = conn.QueryRow(ctx, `SELECT true, (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname
			AND NOT (t.schemaname = 'pgaudit_cdc' AND t.tablename = 'watches'))
		FROM pg_publication p WHERE p.pubname = $1`, o.publication).Scan(&st.Publication.Exists, &st.Publication.Tables)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reading the publication: %w", err)
	}
	entries, err := watches.Load(ctx, conn, false)
	if err != nil {
		return nil, err
	}
	st.Watches = []watchJSON{}
	for _, e := range entries {
		st.Watches = append(st.Watches, watchJSON{Table: e.Table, Kind: e.Kind, Source: e.Source, Since: e.CreatedAt})
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgaudit_cdc.dead_letters WHERE slot_name = $1`, o.slot).Scan(&st.DeadLetters); err != nil {
		return nil, fmt.Errorf("counting dead letters: %w", err)
	}
	return st, nil
}

func printStatus(w io.Writer, st *Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if !st.Slot.Exists {
		fmt.Fprintf(tw, "slot\t%s (not created yet: run pgaudit-cdc watch)\n", st.Slot.Name)
	} else {
		agent := "no agent connected"
		if st.Slot.AgentConnected {
			agent = fmt.Sprintf("agent connected (PID %d, %s)", derefInt32(st.Slot.ActivePID), st.Slot.AgentAddress)
		}
		fmt.Fprintf(tw, "slot\t%s: %s\n", st.Slot.Name, agent)
		fmt.Fprintf(tw, "confirmed LSN\t%s\n", st.Slot.ConfirmedFlushLSN)
		fmt.Fprintf(tw, "lag\t%s behind the server's WAL\n", humanBytes(st.Slot.LagBytes))
		fmt.Fprintf(tw, "retained WAL\t%s (wal_status %s)\n", humanBytes(st.Slot.RetainedWALBytes), st.Slot.WALStatus)
	}
	pub := "missing"
	if st.Publication.Exists {
		pub = fmt.Sprintf("%d tables", st.Publication.Tables)
	}
	fmt.Fprintf(tw, "publication\t%s: %s\n", st.Publication.Name, pub)
	fmt.Fprintf(tw, "dead letters\t%d\n", st.DeadLetters)
	fmt.Fprintf(tw, "watches\t%d\n", len(st.Watches))
	_ = tw.Flush()
	if len(st.Watches) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TABLE\tKIND\tSOURCE\tSINCE")
		for _, e := range st.Watches {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Table, e.Kind, e.Source, e.Since.UTC().Format(time.RFC3339))
		}
		_ = tw.Flush()
	}
}

func humanBytes(p *int64) string {
	if p == nil {
		return "unknown"
	}
	v := float64(*p)
	for _, unit := range []string{"B", "kB", "MB", "GB"} {
		if v < 1024 || unit == "GB" {
			if unit == "B" {
				return fmt.Sprintf("%d B", *p)
			}
			return fmt.Sprintf("%.1f %s", v, unit)
		}
		v /= 1024
	}
	return ""
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt32(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

func newDoctorCmd(o *options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that the database (and spine) can run pgaudit-cdc; each failure names its fix",
		Example: `  pgaudit-cdc doctor
  AUDIT_STREAM_URL=http://audit-stream:8093 pgaudit-cdc doctor --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				spine, err := o.spineClient(nil, publish.Hooks{})
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				defer cancel()
				rs := preflight.Run(ctx, conn, preflight.Options{Slot: o.slot, Publication: o.publication, Spine: spine})
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if err := enc.Encode(rs); err != nil {
						return err
					}
				} else {
					printChecks(cmd.OutOrStdout(), rs)
				}
				if preflight.Failed(rs) {
					return &ExitError{Code: 1, Err: fmt.Errorf("preflight checks failed")}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printChecks(w io.Writer, rs []preflight.Result) {
	for _, r := range rs {
		mark := map[preflight.Status]string{preflight.OK: "ok  ", preflight.Warn: "WARN", preflight.Fail: "FAIL"}[r.Status]
		fmt.Fprintf(w, "%s  %s: %s\n", mark, r.Name, r.Detail)
		if r.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", r.Fix)
		}
	}
}

// SetupSQL returns the statements creating a least-privilege role for
// pgaudit-cdc in database db, able to watch tables owned by tableOwner.
func SetupSQL(role, db, tableOwner string) string {
	id := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	var b strings.Builder
	fmt.Fprintf(&b, `-- Least-privilege role for pgaudit-cdc. Run as a superuser (or your cloud's admin role).

-- 1. Log in and stream logical replication: REPLICATION lets the role create its slot
--    and read the WAL through it; it grants no access to table data by SQL.
--    (Amazon RDS/Aurora: CREATE ROLE ... LOGIN; then GRANT rds_replication TO the role.)
CREATE ROLE %[1]s WITH LOGIN REPLICATION PASSWORD 'change-me';

-- 2. Connect, and create its own schema (pgaudit_cdc: watch registry, dead letters)
--    and the publication in this database.
GRANT CONNECT, CREATE ON DATABASE %[2]s TO %[1]s;

-- 3. Adding a table to a publication and setting REPLICA IDENTITY FULL need the
--    table owner's rights: membership in the role that owns the watched tables.
GRANT %[3]s TO %[1]s;

-- 4. Optional, superuser only, AFTER the first pgaudit-cdc watch (which creates the
--    function): give partitions of watched tables and tables created in watched schemas
--    REPLICA IDENTITY FULL in the transaction that creates them (otherwise the agent
--    does it within 15 s, and their UPDATE/DELETE events carry the key only until then):
%[4]s;
`, id(role), id(db), id(tableOwner), "-- "+strings.ReplaceAll(watches.EventTriggerSQL, "\n", "\n-- "))
	return b.String()
}

func newSetupCmd(o *options) *cobra.Command {
	var printSQL bool
	var role, db, owner string
	cmd := &cobra.Command{
		Use:   "setup --print-sql",
		Short: "Print the SQL creating a least-privilege role for pgaudit-cdc",
		Example: `  pgaudit-cdc setup --print-sql --role pgaudit_cdc --database app --table-owner app_owner
  pgaudit-cdc setup --print-sql | psql "$ADMIN_DATABASE_URL"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !printSQL {
				return &ExitError{Code: 2, Err: fmt.Errorf("setup only prints SQL for you to review and run: pass --print-sql")}
			}
			if db == "" && o.databaseURL != "" {
				if cfg, err := pgx.ParseConfig(o.databaseURL); err == nil {
					db = cfg.Database
				}
			}
			if db == "" {
				db = "app"
			}
			fmt.Fprint(cmd.OutOrStdout(), SetupSQL(role, db, owner))
			return nil
		},
	}
	cmd.Flags().BoolVar(&printSQL, "print-sql", false, "print the SQL (required)")
	cmd.Flags().StringVar(&role, "role", "pgaudit_cdc", "name of the role to create")
	cmd.Flags().StringVar(&db, "database", "", "database to audit (default: the one in --database-url)")
	cmd.Flags().StringVar(&owner, "table-owner", "app_owner", "role that owns the tables to watch")
	return cmd
}
