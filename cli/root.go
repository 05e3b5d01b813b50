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
	"regexp"
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
	databaseURL     string
	databaseURLFile string
	tokenFile       string
	auditStreamURL  string
	token           string
	caFile          string
	slot            string
	publication     string
	metricsAddr     string
	logLevel        string
	logFormat       string
	spineTimeout    time.Duration
	dedupWindow     int
	maxInFlight     int
	// acceptGap is run's --accept-gap: consent to continue past a capture
	// gap. Deliberately without an environment fall-back: consent is given
	// once, for one gap, not left in a deployment's configuration.
	acceptGap string
	// gapHold is how long run keeps serving /metrics after a gap stopped
	// capture, before it exits with ExitGap.
	gapHold time.Duration
	// The trail's signing (run): the key file, or the explicit choice to
	// run unsigned, and the seal interval in time and events.
	signingKeyFile string
	unsigned       bool
	sealInterval   time.Duration
	sealEvents     int
	anchorFile     string
	// The agent's spill of transactions streamed in progress (run, demo).
	streamInProgress bool
	spillDir         string
	spillMemory      byteSize
	spillMaxBytes    byteSize
	// nats is the JetStream destination (cli/nats.go).
	nats natsOptions
	// relaying: the relay command, which reads JetStream and writes the
	// spine, so both are set.
	relaying bool

	// fromEnv maps the flags that took their value from the environment
	// to the variable's name, so that errors name what the user set.
	fromEnv map[string]string
}

// envFallbacks maps flags to the environment variables read when the flag
// is not given.
var envFallbacks = []struct{ flag, env string }{
	{"database-url", "DATABASE_URL"},
	{"database-url-file", "DATABASE_URL_FILE"},
	{"audit-stream-url", "AUDIT_STREAM_URL"},
	{"audit-stream-token", "AUDIT_STREAM_TOKEN"},
	{"audit-stream-token-file", "AUDIT_STREAM_TOKEN_FILE"},
	{"audit-stream-ca-file", "AUDIT_STREAM_CA_FILE"},
	{"slot", "PGAUDIT_SLOT"},
	{"publication", "PGAUDIT_PUBLICATION"},
	{"metrics-addr", "METRICS_ADDR"},
	{"log-level", "LOG_LEVEL"},
	{"log-format", "LOG_FORMAT"},
	{"spine-timeout", "AUDIT_STREAM_TIMEOUT"},
	{"dedup-window", "PGAUDIT_DEDUP_WINDOW"},
	{"max-in-flight", "PGAUDIT_MAX_IN_FLIGHT"},
	{"signing-key-file", "PGAUDIT_SIGNING_KEY_FILE"},
	{"unsigned", "PGAUDIT_UNSIGNED"},
	{"seal-interval", "PGAUDIT_SEAL_INTERVAL"},
	{"seal-events", "PGAUDIT_SEAL_EVENTS"},
	{"anchor-file", "PGAUDIT_ANCHOR_FILE"},
	{"stream-in-progress", "PGAUDIT_STREAM_IN_PROGRESS"},
	{"spill-dir", "PGAUDIT_SPILL_DIR"},
	{"spill-memory", "PGAUDIT_SPILL_MEMORY"},
	{"spill-max-bytes", "PGAUDIT_SPILL_MAX_BYTES"},
}

// ExitError carries a process exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// usageError is an exit-2 error: something only the user can fix.
func usageError(format string, args ...any) *ExitError {
	return &ExitError{Code: 2, Err: fmt.Errorf(format, args...)}
}

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
			fromEnv, err := applyEnv(cmd.Flags())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			o.fromEnv = fromEnv
			if err := o.readSecrets(cmd.Flags(), cmd.ErrOrStderr()); err != nil {
				return err
			}
			// Cobra checks these after this hook and returns plain errors
			// (exit 1); checked here they exit 2, as a usage error should.
			if err := cmd.ValidateRequiredFlags(); err != nil {
				return usageError("%w: see '%s --help'", err, cmd.CommandPath())
			}
			if err := cmd.ValidateFlagGroups(); err != nil {
				return usageError("%w: see '%s --help'", err, cmd.CommandPath())
			}
			if !needsConfig(cmd) {
				return nil
			}
			o.relaying = cmd.Name() == "relay"
			return o.check()
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&o.databaseURL, "database-url", "", "PostgreSQL connection URL or DSN (env DATABASE_URL); TLS via sslmode=verify-full&sslrootcert=...; keep passwords out of it (PGPASSWORD, a passfile, or --database-url-file)")
	pf.StringVar(&o.databaseURLFile, "database-url-file", "", "file holding the PostgreSQL connection URL, e.g. a mounted secret (env DATABASE_URL_FILE)")
	pf.StringVar(&o.auditStreamURL, "audit-stream-url", "", "audit-stream spine base URL (env AUDIT_STREAM_URL); empty: events go to stdout as JSON lines")
	pf.StringVar(&o.token, "audit-stream-token", "", "bearer token for the spine (env AUDIT_STREAM_TOKEN; on the command line every local user can read it: prefer the environment or --audit-stream-token-file)")
	pf.StringVar(&o.tokenFile, "audit-stream-token-file", "", "file holding the spine's bearer token, e.g. a mounted secret (env AUDIT_STREAM_TOKEN_FILE)")
	pf.StringVar(&o.caFile, "audit-stream-ca-file", "", "PEM CA bundle trusted for an https spine (env AUDIT_STREAM_CA_FILE)")
	pf.StringVar(&o.slot, "slot", "pgaudit_cdc", "logical replication slot name (env PGAUDIT_SLOT)")
	pf.StringVar(&o.publication, "publication", "pgaudit_cdc", "publication name (env PGAUDIT_PUBLICATION)")
	pf.StringVar(&o.metricsAddr, "metrics-addr", "", "address serving /metrics, /healthz and /readyz, e.g. :9187 (env METRICS_ADDR)")
	pf.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (env LOG_LEVEL)")
	pf.StringVar(&o.logFormat, "log-format", "auto", "text, json, or auto: text on a terminal, JSON otherwise (env LOG_FORMAT)")
	pf.DurationVar(&o.spineTimeout, "spine-timeout", 30*time.Second, "how long the spine may be silent: a request that stops moving, or a wait for an answer to start or for more of it (env AUDIT_STREAM_TIMEOUT)")
	pf.IntVar(&o.maxInFlight, "max-in-flight", publish.DefaultMaxInFlight, "most events in flight on the one connection to the spine (HTTP/1.1 pipelining, in commit order); the window adapts below it to the round trip and the spine's rate; 1 sends one at a time, for proxies that do not pipeline (env PGAUDIT_MAX_IN_FLIGHT)")
	o.nats.addFlags(pf)
	pf.IntVar(&o.dedupWindow, "dedup-window", 10000, "most events of one source read back from the spine to find what was already delivered (env PGAUDIT_DEDUP_WINDOW)")

	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &ExitError{Code: 2, Err: err}
	})
	root.AddCommand(
		newWatchCmd(o), newUnwatchCmd(o), newListCmd(o), newRunCmd(o),
		newDeadLettersCmd(o), newDemoCmd(o), newVersionCmd(),
		newStatusCmd(o), newDoctorCmd(o), newSetupCmd(o), newBackfillCmd(o),
		newCheckpointCmd(o), newVerifyCmd(o), newKeygenCmd(), newRotateKeyCmd(o),
		newRelayCmd(o),
	)
	exitCodes(root)
	return root
}

// exitCodes makes the command tree exit 2 on usage errors cobra itself
// reports as plain errors (wrong arguments, an unknown subcommand), and on
// failures only the user can fix (a missing privilege, wal_level), as
// docs/configuration.md ("Exit codes") documents.
func exitCodes(c *cobra.Command) {
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		// A group (the root, dead-letters): without arguments it shows its
		// help; an unknown subcommand is a usage error, not a help page.
		c.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if cmd.SuggestionsMinimumDistance <= 0 {
				cmd.SuggestionsMinimumDistance = 2 // cobra's default
			}
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", strings.Join(s, `" or "`))
			}
			return usageError("%s: run '%s --help' for the commands", msg, cmd.CommandPath())
		}
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	} else if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError("%w: see '%s --help'", err, cmd.CommandPath())
			}
			return nil
		}
	}
	if runE := c.RunE; runE != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := runE(cmd, args)
			var exit *ExitError
			if err != nil && !errors.As(err, &exit) && replication.UserMustFix(err) {
				return &ExitError{Code: 2, Err: err}
			}
			return err
		}
	}
	for _, sub := range c.Commands() {
		exitCodes(sub)
	}
}

// needsConfig reports whether cmd reads the configuration: version, help
// and shell completion run whatever the environment holds.
func needsConfig(cmd *cobra.Command) bool {
	if cmd.HasSubCommands() {
		return false // a group (the root, dead-letters) only shows its help
	}
	for c := cmd; c.HasParent(); c = c.Parent() {
		switch c.Name() {
		case "version", "help", "completion", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd:
			return false
		}
	}
	return true
}

// applyEnv sets the flags not given from their environment variables and
// returns which flags it set, and from which variable.
func applyEnv(fs *pflag.FlagSet) (map[string]string, error) {
	fromEnv := map[string]string{}
	for _, f := range append(envFallbacks[:len(envFallbacks):len(envFallbacks)], natsEnv...) {
		flag := fs.Lookup(f.flag)
		if flag == nil || flag.Changed {
			continue
		}
		if val, ok := os.LookupEnv(f.env); ok && val != "" {
			if err := fs.Set(f.flag, val); err != nil {
				return nil, fmt.Errorf("invalid %s %q: %w", f.env, redactIfSecret(f.env, val), err)
			}
			fromEnv[f.flag] = f.env
		}
	}
	return fromEnv, nil
}

// setting names where a value came from: "--flag" or the environment
// variable it fell back to.
func (o *options) setting(flag string) string {
	if env, ok := o.fromEnv[flag]; ok {
		return env
	}
	return "--" + flag
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

// publicationNameRE is the rule for --publication: a name PostgreSQL keeps
// as written when unquoted, so that SQL, logs and psql all spell it alike.
var publicationNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// maxDedupWindow is the most events the spine returns for one read-back.
const maxDedupWindow = 100000

// validate checks the configuration of a command that needs the database.
func (o *options) validate() error {
	if o.databaseURL == "" {
		return &ExitError{Code: 2, Err: errors.New("no database: set --database-url or DATABASE_URL (e.g. postgres://user@host:5432/db)")}
	}
	return o.check()
}

// check validates the global settings, flags and environment fall-backs
// alike; every failure is an exit-2 error whose one sentence names the fix.
// The root command runs it before every command that reads the
// configuration, so that no value is silently replaced by a default.
func (o *options) check() error {
	if o.databaseURL != "" {
		if err := checkDatabaseURL(o.setting("database-url"), o.databaseURL); err != nil {
			return err
		}
	}
	if err := replication.ValidateSlotName(o.slot); err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if !publicationNameRE.MatchString(o.publication) {
		return usageError("invalid publication name %q (%s): use 1 to 63 characters, lower-case letters, digits, _ and $, starting with a letter or _ (e.g. pgaudit_cdc)", o.publication, o.setting("publication"))
	}
	if o.spineTimeout <= 0 {
		return usageError("invalid %s %s: the spine timeout must be a positive duration, e.g. 30s", o.setting("spine-timeout"), o.spineTimeout)
	}
	if o.maxInFlight < 1 || o.maxInFlight > 1024 {
		return usageError("invalid %s %d: use 1 (one request at a time) to 1024 requests in flight (default %d)", o.setting("max-in-flight"), o.maxInFlight, publish.DefaultMaxInFlight)
	}
	if o.dedupWindow < 1 || o.dedupWindow > maxDedupWindow {
		return usageError("invalid %s %d: the dedup window must be between 1 and %d events (default 10000)", o.setting("dedup-window"), o.dedupWindow, maxDedupWindow)
	}
	if _, err := o.logger(io.Discard); err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	return o.checkNATS()
}

// checkDatabaseURL refuses a connection string pgx cannot parse. The
// message never repeats the string: a malformed one may hide a password
// where the parser's best-effort redaction does not find it.
func checkDatabaseURL(name, dsn string) error {
	_, err := pgx.ParseConfig(dsn)
	if err == nil {
		return nil
	}
	reason := "it is neither a postgres:// URL nor a key=value connection string"
	// "cannot parse `<string, password masked>`: <reason> (<cause>)": keep
	// the reason, which pgx words without the password.
	if msg := err.Error(); strings.HasPrefix(msg, "cannot parse `") {
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			reason = msg[i+3:]
		}
	}
	return usageError("%s cannot be parsed (%s): give a URL such as postgres://user:password@host:5432/db?sslmode=verify-full, percent-encoding reserved characters in the password (%%40 for @, %%25 for %%), or a key=value string such as 'host=db user=auditor dbname=app'", name, reason)
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
		MaxInFlight: o.maxInFlight,
		Logger:      log,
		Hooks:       hooks,
	})
	if err != nil {
		return nil, &ExitError{Code: 2, Err: err}
	}
	return c, nil
}
