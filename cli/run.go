package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/metrics"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/spool"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

func newRunCmd(o *options) *cobra.Command {
	var statusInterval, grace time.Duration
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the service: stream watched tables' changes to the spine",
		Long: `run creates the publication and slot when missing, streams committed changes of
the watched tables, and POSTs one event per change to the spine, in commit
order (pipelined on one connection, --max-in-flight). The LSN confirmed to PostgreSQL never passes an event the
spine has not accepted. Without --audit-stream-url, events are written to
stdout as JSON lines. SIGINT/SIGTERM stop it cleanly (exit 0).`,
		Example: `  DATABASE_URL=postgres://auditor@db/app AUDIT_STREAM_URL=http://audit-stream:8093 \
    pgaudit-cdc run --metrics-addr :9187
  pgaudit-cdc run --database-url postgres://localhost/app   # events on stdout`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			if statusInterval <= 0 {
				return usageError("invalid --status-interval %s: it must be a positive duration, e.g. 10s", statusInterval)
			}
			if grace < 0 {
				return usageError("invalid --shutdown-grace %s: it must be 0 (stop at once; undelivered events stay in the slot and are sent after the restart) or a positive duration, e.g. 5s", grace)
			}
			if o.gapHold < 0 {
				return usageError("invalid --gap-hold %s: it must be 0 (exit at once after a capture gap) or a positive duration, e.g. 30s", o.gapHold)
			}
			if grace == 0 {
				grace = time.Nanosecond // the agent takes 0 for "use the default"
			}
			log, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			if os.Getenv("GOMAXPROCS") == "" {
				// One walsender, on one core, produces the stream; the
				// agent's stages hand it to each other. On one P those
				// hand-offs cost no cross-thread wake-ups: half the CPU
				// per small transaction, and a faster drain too
				// (BENCHMARKS.md). The GOMAXPROCS variable overrides it.
				// Only the run command does this: the demo and tests
				// share runAgent with other work in the process.
				runtime.GOMAXPROCS(1)
				defer runtime.SetDefaultGOMAXPROCS()
			}
			return runAgent(cmd.Context(), o, log, cmd.OutOrStdout(), statusInterval, grace, nil)
		},
	}
	cmd.Flags().StringVar(&o.acceptGap, "accept-gap", "", "consent to continue past the pending capture gap with this ID (alone: the gap already pending when run first reaches the database, none found then voids it); records one GAP event and resumes from a new slot")
	cmd.Flags().Lookup("accept-gap").NoOptDefVal = capture.AcceptAny
	cmd.Flags().DurationVar(&o.gapHold, "gap-hold", 30*time.Second, "with --metrics-addr: how long to keep serving /metrics (pgaudit_cdc_gap_pending 1) after a capture gap stopped capture, before exiting with code 3, so that Prometheus sees it")
	cmd.Flags().DurationVar(&statusInterval, "status-interval", 10*time.Second, "how often the confirmed LSN is reported to PostgreSQL (positive)")
	cmd.Flags().DurationVar(&grace, "shutdown-grace", 5*time.Second, "how long already-decoded events may still be delivered after SIGTERM (0: stop at once)")
	addSigningFlags(cmd, o)
	addSpillFlags(cmd, o)
	return cmd
}

// addSpillFlags adds the flags of the agent's own spill of transactions
// streamed while in progress (run, demo).
func addSpillFlags(cmd *cobra.Command, o *options) {
	o.spillMemory, o.spillMaxBytes = spool.DefaultMemory, spool.DefaultMaxDisk
	cmd.Flags().BoolVar(&o.streamInProgress, "stream-in-progress", true, "on PostgreSQL 14+, take transactions that outgrow logical_decoding_work_mem while they are in progress (pgoutput protocol 2) and keep them in the agent's spill until their commit, instead of letting the database server write them to its own disk and read them back; false asks for whole transactions (protocol 1)")
	cmd.Flags().StringVar(&o.spillDir, "spill-dir", spool.DefaultDir(), "where streamed transactions larger than --spill-memory are kept until their commit, and where a message over 16 MiB (one huge row) is set aside as it arrives so that it is never held whole in memory (created if missing; the files are unlinked at once, so nothing outlives the process)")
	cmd.Flags().Var(&o.spillMemory, "spill-memory", "bytes of streamed transactions kept in memory, over all open ones, before they go to --spill-dir")
	cmd.Flags().Var(&o.spillMaxBytes, "spill-max-bytes", "the most bytes kept in --spill-dir, streamed transactions and messages set aside together (size it above the largest transaction plus its largest row); one that needs more stops capture (loudly, losing nothing) until it is raised")
}

// addSigningFlags adds the trail's signing flags (run, demo).
func addSigningFlags(cmd *cobra.Command, o *options) {
	cmd.Flags().StringVar(&o.signingKeyFile, "signing-key-file", "", "the Ed25519 key (PKCS #8 PEM, from `pgaudit-cdc keygen`) that signs the trail's seals; a file or a mounted secret, never the key itself")
	cmd.Flags().BoolVar(&o.unsigned, "unsigned", false, "deliver an unauthenticated trail, without seals (logged; verify reports it)")
	cmd.Flags().DurationVar(&o.sealInterval, "seal-interval", 250*time.Millisecond, "the longest a delivered event waits for its seal (nothing is confirmed to PostgreSQL beyond the last seal)")
	cmd.Flags().IntVar(&o.sealEvents, "seal-events", 10000, "the most events one seal covers before the next is written (one hand-over more at most)")
	cmd.Flags().StringVar(&o.anchorFile, "anchor-file", "", "also append each seal's head to this file (JSON lines), somewhere the spine's host does not control; verify --anchor-file checks the trail reaches it")
}

// signer loads the signing key, or says why the trail runs unsigned.
func (o *options) signer(log *slog.Logger) (*trail.Key, error) {
	switch {
	case o.signingKeyFile != "" && o.unsigned:
		return nil, usageError("both %s and %s are set: sign with the key, or run unsigned, not both", o.setting("signing-key-file"), o.setting("unsigned"))
	case o.unsigned:
		log.Warn("running unsigned (--unsigned): the trail carries no seals, so nothing proves an event is pgaudit-cdc's; verify reports the trail as unsigned")
		return nil, nil
	case o.signingKeyFile == "":
		return nil, usageError("no signing key: set --signing-key-file or PGAUDIT_SIGNING_KEY_FILE to a key made by `pgaudit-cdc keygen --out FILE`, or choose --unsigned to run without authentication")
	}
	if o.sealInterval <= 0 || o.sealEvents <= 0 {
		return nil, usageError("invalid seal bounds (--seal-interval %s, --seal-events %d): both must be positive", o.sealInterval, o.sealEvents)
	}
	key, err := trail.LoadKey(o.signingKeyFile)
	if err != nil {
		return nil, &ExitError{Code: 2, Err: err}
	}
	log.Info("signing the trail", "key", key.Fingerprint())
	return key, nil
}

// runAgent builds the sink, the metrics server and the agent, and runs it
// until ctx ends. wrap, when set, wraps the sink (the demo counts events).
func runAgent(ctx context.Context, o *options, log *slog.Logger, stdout interface{ Write([]byte) (int, error) },
	statusInterval, grace time.Duration, wrap func(publish.Sink) publish.Sink) error {
	key, err := o.signer(log)
	if err != nil {
		return err
	}
	m := metrics.New()
	ready := &metrics.Readiness{}
	hooks := m.PublishHooks(ready)
	spine, err := o.spineClient(log, hooks)
	if err != nil {
		return err
	}
	js, err := o.natsClient(log, hooks)
	if err != nil {
		return err
	}
	if js != nil {
		defer js.Close()
	}
	sink, err := o.destination(ctx, log, m, spine, js, stdout)
	if err != nil {
		return err
	}
	if wrap != nil {
		sink = wrap(sink)
	}
	stop, err := o.serveMetrics(ctx, log, m, ready)
	if err != nil {
		return err
	}
	defer stop()
	cfg := agent.Config{
		DatabaseURL:    o.databaseURL,
		Slot:           o.slot,
		Publication:    o.publication,
		Sink:           sink,
		StatusInterval: statusInterval,
		ShutdownGrace:  grace,
		AcceptGap:      o.acceptGap,
		AcceptedBy:     acceptedBy(),
		Logger:         log,
		Metrics:        m,
		Ready:          ready,
		Signer:         key,
		Unsigned:       key == nil,
		SealInterval:   o.sealInterval,
		SealEvents:     o.sealEvents,
		AnchorFile:     o.anchorFile,
		NoStreaming:    !o.streamInProgress,
		Spill:          spool.Config{Dir: o.spillDir, Memory: int64(o.spillMemory), MaxDisk: int64(o.spillMaxBytes)},
	}
	if spine != nil {
		cfg.Spine = spine
	}
	if js != nil {
		cfg.Spine = js
	}
	a, err := agent.New(cfg)
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	preflightLog(ctx, o, log, spine)
	host, _ := os.Hostname()
	log.Info("pgaudit-cdc starting", "instance", host, "pid", os.Getpid(), "slot", o.slot, "publication", o.publication)
	return o.exitOf(ctx, log, a.Run(ctx))
}

// destination returns the sink events go to: the JetStream stream, the
// spine, or stdout, checked once so that the log says what is not
// answering yet. A stream that can never hold the trail is an exit 2.
func (o *options) destination(ctx context.Context, log *slog.Logger, m *metrics.Metrics, spine *publish.Client, js *natsjs.Client,
	stdout interface{ Write([]byte) (int, error) }) (publish.Sink, error) {
	switch {
	case js != nil:
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := js.Health(hctx)
		cancel()
		var se *natsjs.StreamError
		if errors.As(err, &se) {
			return nil, &ExitError{Code: 2, Err: err}
		}
		if err != nil {
			log.Warn("the JetStream stream is not answering yet; events wait in the slot until it does", "stream", o.nats.stream, "err", err)
		}
		return js, nil
	case spine != nil:
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := spine.Health(hctx); err != nil {
			log.Warn("the spine is not answering yet; events wait in the slot until it does", "err", err)
		}
		cancel()
		return spine, nil
	default:
		log.Info("no --audit-stream-url: writing events to stdout as JSON lines")
		m.SpineUp.Set(1)
		return publish.NewWriter(stdout), nil
	}
}

// serveMetrics serves /metrics, /healthz and /readyz on --metrics-addr,
// when set, until stop.
func (o *options) serveMetrics(ctx context.Context, log *slog.Logger, m *metrics.Metrics, ready *metrics.Readiness) (stop func(), err error) {
	if o.metricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("listening on --metrics-addr %q: %w", o.metricsAddr, err)}
	}
	srv := &http.Server{Handler: m.Handler(ready), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

// exitOf maps what the agent's Run returned to run's exit: 2 for what only
// the user can fix, 3 for a capture gap (after serving /metrics for
// --gap-hold, so that the gap is scraped).
func (o *options) exitOf(ctx context.Context, log *slog.Logger, err error) error {
	var cfgErr *agent.ConfigError
	var gapErr *capture.GapError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &cfgErr):
		return &ExitError{Code: 2, Err: err}
	case errors.As(err, &gapErr):
		if o.metricsAddr != "" && o.gapHold > 0 {
			log.Error("capture is stopped by a gap; serving /metrics a little longer so that the gap is scraped, then exiting with code 3",
				"hold", o.gapHold, "gap_id", gapErr.Gap.ID)
			t := time.NewTimer(o.gapHold)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		return &ExitError{Code: ExitGap, Err: err}
	}
	return err
}

// preflightLog runs the doctor's checks once at start and logs what is not
// fine; the agent itself stops on what it cannot work around.
func preflightLog(ctx context.Context, o *options, log *slog.Logger, spine *publish.Client) {
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(pctx, o.databaseURL)
	if err != nil {
		return // the agent reports connection errors itself, with retries
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, r := range preflight.Run(pctx, conn, preflight.Options{Slot: o.slot, Publication: o.publication, Spine: spine}) {
		switch r.Status {
		case preflight.Fail:
			log.Error("preflight check failed", "check", r.Name, "detail", r.Detail, "fix", r.Fix)
		case preflight.Warn:
			log.Warn("preflight warning", "check", r.Name, "detail", r.Detail, "fix", r.Fix)
		}
	}
}

// ExitGap is the exit code of `run` and `status` while a capture gap awaits
// an operator's consent (and of `watch`, which cannot start capture then).
const ExitGap = 3

// acceptedBy names who consented to a gap: the OS user and host running the
// command (the database role is added when the gap is recorded).
func acceptedBy() string {
	who := os.Getenv("USER")
	if who == "" {
		who = fmt.Sprintf("uid %d", os.Getuid())
	}
	host, _ := os.Hostname()
	return who + "@" + host + " (pgaudit-cdc run --accept-gap)"
}

// ExitCode is the process exit code for an error returned by the root
// command: an *ExitError's code, ExitGap for a pending capture gap from any
// command, else 1.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	var gapErr *capture.GapError
	if errors.As(err, &gapErr) {
		return ExitGap
	}
	return 1
}
