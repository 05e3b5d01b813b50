package natsjs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// Defaults of Config.
const (
	DefaultStream           = "PGAUDIT_CDC"
	DefaultSubject          = "pgaudit.cdc"
	DefaultMaxInFlight      = 1024
	DefaultMaxInFlightBytes = 8 << 20
	DefaultReadBack         = 10000
)

// Config configures a Client. Secrets come from files, never from values
// on a command line.
type Config struct {
	// URLs are the NATS servers to start from; the rest of the cluster is
	// discovered.
	URLs     []string
	Stream   string
	Subject  string
	Replicas int // 0: 3 when the cluster has three or more servers, else 1
	// Duplicates is the duplicate window of a stream pgaudit-cdc creates
	// (default DefaultDuplicates).
	Duplicates time.Duration

	CredsFile    string // a user JWT and NKey seed (.creds)
	NKeySeedFile string // an NKey seed
	User         string // with PasswordFile
	PasswordFile string
	TokenFile    string
	CAFile       string // TLS: the servers' CA
	CertFile     string // TLS: a client certificate, with KeyFile
	KeyFile      string

	// The window of messages awaiting their acknowledgement, in messages
	// and bytes (defaults DefaultMaxInFlight, DefaultMaxInFlightBytes).
	MaxInFlight      int
	MaxInFlightBytes int
	// AckTimeout is how long one message may wait for its acknowledgement
	// before its fate is read from the stream (default 10s).
	AckTimeout time.Duration
	// ReadBack is how many of the stream's newest messages are read back
	// to recognise events already stored (default DefaultReadBack).
	ReadBack   int
	MinBackoff time.Duration // default 200ms
	MaxBackoff time.Duration // default 30s
	Logger     *slog.Logger
	Hooks      publish.Hooks
}

func (cfg *Config) defaults() error {
	if len(cfg.URLs) == 0 {
		return errors.New("no NATS server: set --nats-url (or PGAUDIT_NATS_URL) to nats://host:4222, several separated by commas")
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if strings.ContainsAny(cfg.Stream, ". *>\t\r\n/\\") {
		return fmt.Errorf("invalid stream name %q: a JetStream stream name has no spaces, dots, slashes or wildcards", cfg.Stream)
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject
	}
	if strings.ContainsAny(cfg.Subject, " *>\t\r\n") || strings.HasPrefix(cfg.Subject, ".") || strings.HasSuffix(cfg.Subject, ".") || strings.Contains(cfg.Subject, "..") {
		return fmt.Errorf("invalid subject %q: pgaudit-cdc writes one literal subject, such as pgaudit.cdc (no wildcards or spaces)", cfg.Subject)
	}
	if cfg.Replicas < 0 || cfg.Replicas > 5 {
		return fmt.Errorf("invalid replicas %d: JetStream keeps 1 to 5 replicas of a stream", cfg.Replicas)
	}
	if cfg.Duplicates <= 0 {
		cfg.Duplicates = DefaultDuplicates
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 10 * time.Second
	}
	if cfg.ReadBack <= 0 {
		cfg.ReadBack = DefaultReadBack
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return errors.New("a TLS client certificate needs both --nats-cert-file and --nats-key-file")
	}
	if (cfg.User == "") != (cfg.PasswordFile == "") {
		return errors.New("a NATS user needs both --nats-user and --nats-password-file")
	}
	return nil
}

// options turns cfg into connection options. The connection keeps trying
// for ever: an unreachable cluster, or one that refuses the credentials, is
// an outage the agent waits out (not ready, WAL retained), never a reason
// to stop.
func (cfg *Config) options(asyncErr *atomic.Pointer[error]) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("pgaudit-cdc"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.IgnoreAuthErrorAbort(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			asyncErr.Store(&err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				asyncErr.Store(&err)
			}
		}),
	}
	if cfg.CredsFile != "" {
		if _, err := os.Stat(cfg.CredsFile); err != nil {
			return nil, fmt.Errorf("reading the NATS credentials file (--nats-creds-file): %w", err)
		}
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("reading the NKey seed file (--nats-nkey-file): %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.PasswordFile != "" {
		pw, err := readSecret(cfg.PasswordFile, "--nats-password-file")
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(cfg.User, pw))
	}
	if cfg.TokenFile != "" {
		tok, err := readSecret(cfg.TokenFile, "--nats-token-file")
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Token(tok))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	if cfg.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.CertFile, cfg.KeyFile))
	}
	return opts, nil
}

func readSecret(path, flag string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", flag, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s %s is empty: write the secret into it", flag, path)
	}
	return s, nil
}
