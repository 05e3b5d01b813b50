package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// demoChanges are committed by the demo; each statement's row count adds to
// the events expected.
var demoChanges = []struct {
	sql    string
	events int
}{
	{`INSERT INTO decisions (id, status, vendor, amount, details) VALUES
		('DEC-001', 'pending', 'acme', 1250.50, '{"risk": "low", "tags": ["hardware"]}'),
		('DEC-002', 'pending', 'globex', 98000.00, '{"risk": "high", "approvers": 2}')`, 2},
	{`UPDATE decisions SET status = 'approved', updated_at = now() WHERE id = 'DEC-001'`, 1},
	{`DELETE FROM decisions WHERE id = 'DEC-002'`, 1},
	{`TRUNCATE decisions`, 1},
}

func newDemoCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show events flowing: a throwaway PostgreSQL, a sample table, a few changes, the envelopes",
		Long: `demo starts a throwaway PostgreSQL cluster (unless --database-url is given),
creates a sample 'decisions' table, watches it, runs the agent, commits an
INSERT, an UPDATE, a DELETE and a TRUNCATE, and prints the envelopes as JSON
lines on stdout (or POSTs them to --audit-stream-url). It needs the PostgreSQL
server binaries (apt-get install postgresql) when no --database-url is given.`,
		Example: "  pgaudit-cdc demo\n  pgaudit-cdc demo --audit-stream-url http://localhost:8093",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			ctx := cmd.Context()
			if o.signingKeyFile == "" && !o.unsigned {
				file, err := throwawayKey(log)
				if err != nil {
					return err
				}
				defer os.RemoveAll(filepath.Dir(file))
				o.signingKeyFile = file
			}
			if o.databaseURL == "" {
				stop, err := o.demoCluster(ctx, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			if err := o.validate(); err != nil {
				return err
			}
			conn, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			if err := o.demoTable(ctx, conn, log); err != nil {
				return err
			}
			return o.demoRun(cmd, conn, log)
		},
	}
	addSigningFlags(cmd, o)
	addSpillFlags(cmd, o)
	return cmd
}

// demoCluster starts the embedded PostgreSQL with a pgaudit_demo database
// and points the options at it, until stop.
func (o *options) demoCluster(ctx context.Context, log *slog.Logger) (stop func(), err error) {
	log.Info("starting a throwaway PostgreSQL cluster")
	cluster, err := embedded.StartLocal(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting a throwaway PostgreSQL (or pass --database-url): %w", err)
	}
	admin, err := pgx.Connect(ctx, cluster.AdminURL())
	if err != nil {
		cluster.Shutdown()
		return nil, fmt.Errorf("connecting to the throwaway cluster: %w", err)
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE pgaudit_demo")
	admin.Close(ctx)
	if err != nil {
		cluster.Shutdown()
		return nil, fmt.Errorf("creating the demo database: %w", err)
	}
	o.databaseURL = cluster.DatabaseURL("pgaudit_demo")
	return func() { cluster.Shutdown() }, nil
}

// demoTable creates the sample table and watches it.
func (o *options) demoTable(ctx context.Context, conn *pgx.Conn, log *slog.Logger) error {
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS decisions (
		id text PRIMARY KEY, status text NOT NULL, vendor text, amount numeric(12,2),
		details jsonb, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("creating the sample table: %w", err)
	}
	const kind = "decision_card_status_changed"
	if err := checkKind(ctx, o, kind, log); err != nil {
		return err
	}
	name, err := watches.NewRegistry(conn, o.publication, o.slot).Watch(ctx, watches.TableName{Schema: "public", Name: "decisions"}, kind, "pgaudit-cdc-demo")
	if err != nil {
		return err
	}
	log.Info("watching", "table", name)
	return nil
}

// demoRun runs the agent, commits the demo changes, and stops once their
// events were delivered.
func (o *options) demoRun(cmd *cobra.Command, conn *pgx.Conn, log *slog.Logger) error {
	ctx := cmd.Context()
	want := int64(0)
	for _, c := range demoChanges {
		want += int64(c.events)
	}
	var got atomic.Int64
	done := make(chan struct{})
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	agentErr := make(chan error, 1)
	go func() {
		agentErr <- runAgent(actx, o, log, cmd.OutOrStdout(), time.Second, 2*time.Second, func(s publish.Sink) publish.Sink {
			return countingSink{s, &got, want, done}
		})
	}()
	for _, c := range demoChanges {
		if _, err := conn.Exec(ctx, c.sql); err != nil {
			return fmt.Errorf("running the demo change %q: %w", c.sql, err)
		}
	}
	select {
	case <-done:
		log.Info("demo complete", "events_delivered", got.Load())
	case err := <-agentErr:
		if err == nil {
			err = errors.New("the agent stopped early")
		}
		return err
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("only %d of %d events arrived within 2 minutes", got.Load(), want)
	case <-ctx.Done():
		return nil
	}
	cancel()
	return <-agentErr
}

// throwawayKey writes a new signing key into a private temporary
// directory, for the demo's trail; the caller removes the directory.
func throwawayKey(log *slog.Logger) (string, error) {
	dir, err := os.MkdirTemp("", "pgaudit-cdc-demo-key-")
	if err != nil {
		return "", fmt.Errorf("writing the demo's throwaway signing key: %w", err)
	}
	path := filepath.Join(dir, "signing-key.pem")
	key, err := trail.NewKeyFile(path)
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("writing the demo's throwaway signing key: %w", err)
	}
	log.Info("signing the demo's trail with a throwaway key (removed at the end)", "key", key.Fingerprint())
	return path, nil
}

// countingSink closes done once want change events were accepted.
type countingSink struct {
	publish.Sink
	n    *atomic.Int64
	want int64
	done chan struct{}
}

func (c countingSink) Publish(ctx context.Context, ev *envelope.Event) error {
	if err := c.Sink.Publish(ctx, ev); err != nil {
		return err
	}
	if ev.Source == envelope.SelfAuditSource {
		return nil // the watch's own event, printed too, but not one of the changes
	}
	if c.n.Add(1) == c.want {
		close(c.done)
	}
	return nil
}
