package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgaudit-cdc/pgaudit-cdc/metrics"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/relay"
)

// natsOptions are the flags of the JetStream destination. Secrets are
// files (mounted secrets), never values on the command line.
type natsOptions struct {
	urls         string
	stream       string
	subject      string
	replicas     int
	credsFile    string
	nkeyFile     string
	user         string
	passwordFile string
	tokenFile    string
	caFile       string
	certFile     string
	keyFile      string
}

var natsEnv = []struct{ flag, env string }{
	{"nats-url", "PGAUDIT_NATS_URL"},
	{"nats-stream", "PGAUDIT_NATS_STREAM"},
	{"nats-subject", "PGAUDIT_NATS_SUBJECT"},
	{"nats-replicas", "PGAUDIT_NATS_REPLICAS"},
	{"nats-creds-file", "PGAUDIT_NATS_CREDS_FILE"},
	{"nats-nkey-file", "PGAUDIT_NATS_NKEY_FILE"},
	{"nats-user", "PGAUDIT_NATS_USER"},
	{"nats-password-file", "PGAUDIT_NATS_PASSWORD_FILE"},
	{"nats-token-file", "PGAUDIT_NATS_TOKEN_FILE"},
	{"nats-ca-file", "PGAUDIT_NATS_CA_FILE"},
	{"nats-cert-file", "PGAUDIT_NATS_CERT_FILE"},
	{"nats-key-file", "PGAUDIT_NATS_KEY_FILE"},
}

func (n *natsOptions) addFlags(pf *pflag.FlagSet) {
	pf.StringVar(&n.urls, "nats-url", "", "deliver into NATS JetStream instead of the spine: server URLs, comma-separated, e.g. nats://n1:4222,nats://n2:4222 (env PGAUDIT_NATS_URL); credentials go in the files below, never in the URL")
	pf.StringVar(&n.stream, "nats-stream", natsjs.DefaultStream, "the JetStream stream of this agent's trail, created when missing (env PGAUDIT_NATS_STREAM); one stream per audited database")
	pf.StringVar(&n.subject, "nats-subject", natsjs.DefaultSubject, "the stream's one subject, written only by this agent (env PGAUDIT_NATS_SUBJECT)")
	pf.IntVar(&n.replicas, "nats-replicas", 0, "replicas of a stream pgaudit-cdc creates, and the least an existing one must have; 0: 3 when the cluster has three or more servers, else 1 (env PGAUDIT_NATS_REPLICAS)")
	pf.StringVar(&n.credsFile, "nats-creds-file", "", "NATS user JWT and NKey seed (.creds file) (env PGAUDIT_NATS_CREDS_FILE)")
	pf.StringVar(&n.nkeyFile, "nats-nkey-file", "", "NATS NKey seed file (env PGAUDIT_NATS_NKEY_FILE)")
	pf.StringVar(&n.user, "nats-user", "", "NATS user name, with --nats-password-file (env PGAUDIT_NATS_USER)")
	pf.StringVar(&n.passwordFile, "nats-password-file", "", "file holding the NATS user's password (env PGAUDIT_NATS_PASSWORD_FILE)")
	pf.StringVar(&n.tokenFile, "nats-token-file", "", "file holding a NATS token (env PGAUDIT_NATS_TOKEN_FILE)")
	pf.StringVar(&n.caFile, "nats-ca-file", "", "PEM CA bundle trusted for the NATS servers' TLS (env PGAUDIT_NATS_CA_FILE)")
	pf.StringVar(&n.certFile, "nats-cert-file", "", "TLS client certificate for NATS, with --nats-key-file (env PGAUDIT_NATS_CERT_FILE)")
	pf.StringVar(&n.keyFile, "nats-key-file", "", "TLS client key for NATS (env PGAUDIT_NATS_KEY_FILE)")
}

// check refuses what cannot work before anything connects.
func (o *options) checkNATS() error {
	n := &o.nats
	if n.urls == "" {
		return nil
	}
	if o.auditStreamURL != "" && !o.relaying {
		return usageError("both %s and %s are set: pgaudit-cdc delivers to one destination; to keep the spine as the view of a JetStream trail, run `pgaudit-cdc relay`", o.setting("audit-stream-url"), o.setting("nats-url"))
	}
	for _, u := range n.serverURLs() {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls") {
			return usageError("invalid NATS server URL in %s: want nats://host:4222 or tls://host:4222", o.setting("nats-url"))
		}
		if p.User != nil {
			return usageError("%s holds credentials: every local user can read a command line or an environment listing; put them in --nats-creds-file, --nats-password-file or --nats-token-file", o.setting("nats-url"))
		}
	}
	return nil
}

func (n *natsOptions) serverURLs() []string {
	var out []string
	for _, u := range strings.Split(n.urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// natsClient connects to the JetStream destination (in the background: an
// unreachable cluster is waited for), or returns nil when none is set.
func (o *options) natsClient(log *slog.Logger, hooks publish.Hooks) (*natsjs.Client, error) {
	n := &o.nats
	if n.urls == "" {
		return nil, nil
	}
	c, err := natsjs.Connect(natsjs.Config{
		URLs: n.serverURLs(), Stream: n.stream, Subject: n.subject, Replicas: n.replicas,
		CredsFile: n.credsFile, NKeySeedFile: n.nkeyFile, User: n.user, PasswordFile: n.passwordFile,
		TokenFile: n.tokenFile, CAFile: n.caFile, CertFile: n.certFile, KeyFile: n.keyFile,
		MaxInFlight: o.maxInFlight, ReadBack: o.dedupWindow, Logger: log, Hooks: hooks,
	})
	if err != nil {
		return nil, &ExitError{Code: 2, Err: err}
	}
	return c, nil
}

// natsChecks are doctor's checks of the JetStream destination: each
// setting that makes the stream weaker than the trail needs is a failure
// naming its fix.
func natsChecks(ctx context.Context, o *options) []preflight.Result {
	js, err := o.natsClient(nil, publish.Hooks{})
	if err != nil {
		return []preflight.Result{{Name: "nats", Status: preflight.Fail, Detail: err.Error(), Fix: "correct the --nats-* settings"}}
	}
	defer js.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !js.Conn().IsConnected() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !js.Conn().IsConnected() {
		detail := "no NATS server at " + o.nats.urls + " answered within 5s"
		if e := js.Conn().LastError(); e != nil {
			detail += ": " + e.Error()
		}
		return []preflight.Result{{Name: "nats", Status: preflight.Fail, Detail: detail,
			Fix: "check --nats-url, the credentials files and TLS settings, and that the servers run; events wait in the slot meanwhile"}}
	}
	nc := js.Conn()
	rs := []preflight.Result{{Name: "nats", Status: preflight.OK,
		Detail: fmt.Sprintf("connected to %s (%d servers known); max_payload %d bytes: larger events stop capture until it is raised", nc.ConnectedServerName(), len(nc.Servers()), nc.MaxPayload())}}
	info, problems, found, err := js.Inspect(ctx)
	switch {
	case err != nil:
		return append(rs, preflight.Result{Name: "nats stream", Status: preflight.Fail, Detail: err.Error(),
			Fix: "grant pgaudit-cdc's NATS user the JetStream API ($JS.API.>) and enable JetStream for its account"})
	case !found:
		return append(rs, preflight.Result{Name: "nats stream", Status: preflight.OK,
			Detail: fmt.Sprintf("stream %s does not exist yet: run creates it (subject %s, file storage, %d replicas, deny delete and purge)", o.nats.stream, o.nats.subject, js.WantReplicas())})
	}
	for _, p := range problems {
		rs = append(rs, preflight.Result{Name: "nats stream " + p.Setting, Status: preflight.Fail,
			Detail: fmt.Sprintf("stream %s: %s is %s", o.nats.stream, p.Setting, p.Have), Fix: p.Fix})
	}
	if len(problems) == 0 {
		rs = append(rs, preflight.Result{Name: "nats stream", Status: preflight.OK,
			Detail: fmt.Sprintf("stream %s: %d messages, file storage, %d replicas, deny delete and purge, duplicate window %s", o.nats.stream, info.State.Msgs, info.Config.Replicas, info.Config.Duplicates)})
	}
	if cl := info.Cluster; cl != nil {
		for _, r := range cl.Replicas {
			if r.Offline || !r.Current {
				rs = append(rs, preflight.Result{Name: "nats replicas", Status: preflight.Warn,
					Detail: fmt.Sprintf("replica %s of stream %s is %s", r.Name, o.nats.stream, map[bool]string{true: "offline", false: "catching up"}[r.Offline]),
					Fix:    "bring the server back: while a quorum holds, delivery goes on"})
			}
		}
	}
	return rs
}

func newRelayCmd(o *options) *cobra.Command {
	var name string
	var batch int
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Deliver a JetStream trail into the audit-stream spine, exactly once and in order",
		Long: `relay reads the stream pgaudit-cdc run --nats-url writes and delivers every event
into the spine as the agent would have (pipelined, with the spine client's
read-back). Its position moves (in the replicated bucket PGAUDIT_CDC_RELAY) only
after the spine accepted everything up to it. While the spine is down the stream holds the trail,
not the audited database. A relay stopped at any moment resumes from the first
message the spine does not hold. It stops (exit 1) on an event the spine refuses, or
a spine that lost its history, naming the stream sequence and the fix.`,
		Example: `  PGAUDIT_NATS_URL=nats://n1:4222,nats://n2:4222 AUDIT_STREAM_URL=http://audit-stream:8093 \
    pgaudit-cdc relay --metrics-addr :9188`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nats.urls == "" || o.auditStreamURL == "" {
				return usageError("relay reads from JetStream and writes to the spine: set both --nats-url (PGAUDIT_NATS_URL) and --audit-stream-url (AUDIT_STREAM_URL)")
			}
			log, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			m := metrics.New()
			ready := &metrics.Readiness{}
			ready.SetDatabase(true) // the relay has no database
			spine, err := o.spineClient(log, m.PublishHooks(ready))
			if err != nil {
				return err
			}
			js, err := o.natsClient(log, publish.Hooks{})
			if err != nil {
				return err
			}
			defer js.Close()
			if o.metricsAddr != "" {
				ln, err := net.Listen("tcp", o.metricsAddr)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("listening on --metrics-addr %q: %w", o.metricsAddr, err)}
				}
				srv := &http.Server{Handler: m.Handler(ready), ReadHeaderTimeout: 10 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Close()
			}
			log.Info("relay starting", "stream", o.nats.stream, "name", name)
			err = relay.Run(cmd.Context(), relay.Config{Stream: js, Spine: spine, Name: name, Batch: batch, Logger: log,
				Relayed: func(uint64) { m.RelayedEvents.Inc() }})
			if err != nil {
				return &ExitError{Code: 1, Err: err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "pgaudit_cdc_relay", "the relay's name: its position is kept under it in the replicated bucket "+natsjs.RelayBucket)
	cmd.Flags().IntVar(&batch, "batch", 500, "most messages fetched and delivered at once")
	return cmd
}

// destinationJSON is status's view of the JetStream stream.
type destinationJSON struct {
	Kind     string `json:"kind"` // "jetstream"
	Stream   string `json:"stream"`
	Subject  string `json:"subject"`
	Exists   bool   `json:"exists"`
	Messages uint64 `json:"messages"`
	LastSeq  uint64 `json:"last_seq"`
	Replicas int    `json:"replicas"`
	Leader   string `json:"leader,omitempty"`
	Error    string `json:"error,omitempty"`
}

// natsStatus reads the stream's state for status, without creating it.
func natsStatus(ctx context.Context, o *options) *destinationJSON {
	d := &destinationJSON{Kind: "jetstream", Stream: o.nats.stream, Subject: o.nats.subject}
	js, err := o.natsClient(nil, publish.Hooks{})
	if err != nil {
		d.Error = err.Error()
		return d
	}
	defer js.Close()
	info, _, found, err := js.Inspect(ctx)
	switch {
	case err != nil:
		d.Error = err.Error() + " (pgaudit-cdc doctor names the fix)"
	case found:
		d.Exists, d.Messages, d.LastSeq, d.Replicas = true, info.State.Msgs, info.State.LastSeq, info.Config.Replicas
		if info.Cluster != nil {
			d.Leader = info.Cluster.Leader
		}
	}
	return d
}
