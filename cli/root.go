// Package cli builds the pgaudit-cdc command tree (cobra). Every command
// takes its configuration from flags with environment fall-backs, validates
// it, and hands a validated configuration to the packages that do the work.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/version"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// options are the global flags.
type options struct {
	databaseURL    string
	auditStreamURL string
	token          string
	caFile         string
	slot           string
	publication    string
	metricsAddr    string
	logLevel       string
	logFormat      string
	spineTimeout   time.Duration
	dedupWindow    int
}

// envFallbacks maps flags to the environment variables read when the flag
// is not given.
var envFallbacks = []struct{ flag, env string }{
	{"database-url", "DATABASE_URL"},
	{"audit-stream-url", "AUDIT_STREAM_URL"},
	{"audit-stream-token", "AUDIT_STREAM_TOKEN"},
	{"audit-stream-ca-file", "AUDIT_STREAM_CA_FILE"},
	{"slot", "PGAUDIT_SLOT"},
	{"publication", "PGAUDIT_PUBLICATION"},
	{"metrics-addr", "METRICS_ADDR"},
	{"log-level", "LOG_LEVEL"},
	{"log-format", "LOG_FORMAT"},
	{"spine-timeout", "AUDIT_STREAM_TIMEOUT"},
	{"dedup-window", "PGAUDIT_DEDUP_WINDOW"},
}

// ExitError carries a process exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// NewRootCmd returns the pgaudit-cdc command tree.
func NewRootCmd() *cobra.Command {
	o := &options{}
	v, commit, gov := version.Info()
	root := &cobra.Command{
		Use:   "pgaudit-cdc",
		Short: "Audit every committed change to watched PostgreSQL tables into the audit-stream spine",
		Long: `pgaudit-cdc streams INSERT, UPDATE, DELETE and TRUNCATE on watched tables from a
pgoutput logical replication slot and appends one event per change to the
audit-stream spine, confirming WAL to PostgreSQL only after the spine accepted it.`,
		Example: `  export DATABASE_URL=postgres://auditor@db/app AUDIT_STREAM_URL=http://audit-stream:8093
  pgaudit-cdc watch decisions --kind decision_card_status_changed --source procurement-api
  pgaudit-cdc run --metrics-addr :9187`,
		Version:       fmt.Sprintf("%s (commit %s, %s)", v, commit, gov),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd.Flags())
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.databaseURL, "database-url", "", "PostgreSQL connection URL or DSN (env DATABASE_URL); TLS via sslmode=verify-full&sslrootcert=...")
	pf.StringVar(&o.auditStreamURL, "audit-stream-url", "", "audit-stream spine base URL (env AUDIT_STREAM_URL); empty: events go to stdout as JSON lines")
	pf.StringVar(&o.token, "audit-stream-token", "", "bearer token for the spine (env AUDIT_STREAM_TOKEN)")
	pf.StringVar(&o.caFile, "audit-stream-ca-file", "", "PEM CA bundle trusted for an https spine (env AUDIT_STREAM_CA_FILE)")
	pf.StringVar(&o.slot, "slot", "pgaudit_cdc", "logical replication slot name (env PGAUDIT_SLOT)")
	pf.StringVar(&o.publication, "publication", "pgaudit_cdc", "publication name (env PGAUDIT_PUBLICATION)")
	pf.StringVar(&o.metricsAddr, "metrics-addr", "", "address serving /metrics, /healthz and /readyz, e.g. :9187 (env METRICS_ADDR)")
	pf.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (env LOG_LEVEL)")
	pf.StringVar(&o.logFormat, "log-format", "auto", "text, json, or auto: text on a terminal, JSON otherwise (env LOG_FORMAT)")
	pf.DurationVar(&o.spineTimeout, "spine-timeout", 30*time.Second, "timeout of one request to the spine (env AUDIT_STREAM_TIMEOUT)")
	pf.IntVar(&o.dedupWindow, "dedup-window", 10000, "most events of one source read back from the spine to find what was already delivered (env PGAUDIT_DEDUP_WINDOW)")

	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &ExitError{Code: 2, Err: err}
	})
	root.AddCommand(
		newWatchCmd(o), newUnwatchCmd(o), newListCmd(o), newRunCmd(o),
		newDeadLettersCmd(o), newDemoCmd(o), newVersionCmd(),
		newStatusCmd(o), newDoctorCmd(o), newSetupCmd(o), newBackfillCmd(o),
	)
	return root
}

func applyEnv(fs *pflag.FlagSet) error {
	for _, f := range envFallbacks {
		flag := fs.Lookup(f.flag)
		if flag == nil || flag.Changed {
			continue
		}
		if val, ok := os.LookupEnv(f.env); ok && val != "" {
			if err := fs.Set(f.flag, val); err != nil {
				return fmt.Errorf("invalid %s %q: %w", f.env, redactIfSecret(f.env, val), err)
			}
		}
	}
	return nil
}

func redactIfSecret(env, val string) string {
	if strings.Contains(env, "TOKEN") || strings.Contains(env, "URL") {
		return "<redacted>"
	}
	return val
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print version and build information",
		Example: "  pgaudit-cdc version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, commit, gov := version.Info()
			fmt.Fprintf(cmd.OutOrStdout(), "pgaudit-cdc %s\ncommit %s\n%s\n", v, commit, gov)
			return nil
		},
	}
}

// logger builds the slog logger on w (stderr: stdout may carry events).
func (o *options) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("invalid log level %q: use debug, info, warn or error", o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "auto", "":
		if isTerminal(w) {
			return slog.New(slog.NewTextHandler(w, hopts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	default:
		return nil, fmt.Errorf("invalid log format %q: use text, json or auto", o.logFormat)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (o *options) validate() error {
	if o.databaseURL == "" {
		return &ExitError{Code: 2, Err: errors.New("no database: set --database-url or DATABASE_URL (e.g. postgres://user@host:5432/db)")}
	}
	if err := replication.ValidateSlotName(o.slot); err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if err := replication.ValidatePublicationName(o.publication); err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	return nil
}

// connect opens a normal (non-replication) connection.
func (o *options) connect(ctx context.Context) (*pgx.Conn, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, o.databaseURL)
	if err != nil {
		return nil, replication.Explain(fmt.Errorf("connecting to the database: %w", err))
	}
	return conn, nil
}

// withConn runs f with a normal connection, closed afterwards.
func (o *options) withConn(cmd *cobra.Command, f func(conn *pgx.Conn) error) error {
	conn, err := o.connect(cmd.Context())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(cmd.Context()))
	return f(conn)
}

// spineClient builds the spine client, or nil when no URL is configured.
func (o *options) spineClient(log *slog.Logger, hooks publish.Hooks) (*publish.Client, error) {
	if o.auditStreamURL == "" {
		return nil, nil
	}
	c, err := publish.NewClient(publish.ClientConfig{
		URL:         o.auditStreamURL,
		Token:       o.token,
		CAFile:      o.caFile,
		Timeout:     o.spineTimeout,
		DedupWindow: o.dedupWindow,
		Logger:      log,
		Hooks:       hooks,
	})
	if err != nil {
		return nil, &ExitError{Code: 2, Err: err}
	}
	return c, nil
}
