package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// openStream finds the stream, or makes it, and checks its configuration.
func (c *Client) openStream(ctx context.Context) (jetstream.Stream, error) {
	if c.stream != nil {
		return c.stream, nil
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	s, err := c.js.Stream(actx, c.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		want := c.want
		if want.Replicas == 0 {
			want.Replicas = c.defaultReplicas()
		}
		s, err = c.js.CreateStream(actx, want.Config())
		if err == nil {
			c.log.Info("created the JetStream stream", "stream", c.cfg.Stream, "subject", c.cfg.Subject, "replicas", want.Replicas)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	want := c.want
	if want.Replicas == 0 {
		want.Replicas = c.defaultReplicas()
	}
	if ps := want.Check(s.CachedInfo().Config); len(ps) > 0 {
		return nil, &StreamError{Stream: c.cfg.Stream, Problems: ps}
	}
	c.stream = s
	return s, nil
}

// defaultReplicas: 3 when the cluster has three or more servers, else 1.
func (c *Client) defaultReplicas() int {
	if len(c.nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// explainAPI adds the fix to the JetStream API refusals a user causes.
func (c *Client) explainAPI(err error) error {
	if !c.nc.IsConnected() {
		cause := c.nc.LastError()
		if p := c.asyncErr.Load(); p != nil {
			cause = *p
		}
		if cause != nil {
			return fmt.Errorf("%w: not connected to NATS (%w): check --nats-url, the credentials files (--nats-creds-file, --nats-password-file, ...) and TLS", err, cause)
		}
		return fmt.Errorf("%w: not connected to NATS: check --nats-url and that the servers run", err)
	}
	if p := c.asyncErr.Load(); p != nil && errors.Is(*p, nats.ErrPermissionViolation) {
		return fmt.Errorf("%w (%w): grant pgaudit-cdc's NATS user the JetStream API ($JS.API.>) and publish on %s", err, *p, c.cfg.Subject)
	}
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return fmt.Errorf("%w: enable JetStream on the servers and for pgaudit-cdc's account", err)
	}
	if apiErr := (*jetstream.APIError)(nil); errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeNoPeers {
		return fmt.Errorf("%w: fewer JetStream servers are online than the stream's replicas; start the stopped servers (pgaudit-cdc retries meanwhile) or lower --nats-replicas", err)
	}
	return err
}

// jsErrCodeNoPeers is JetStream's "no suitable peers for placement": the
// cluster has fewer servers online (or with room) than the replicas asked.
const jsErrCodeNoPeers jetstream.ErrorCode = 10005

// Health checks that the cluster answers for the stream.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.info(ctx)
	return err
}

// Inspect reads the stream without creating it: its state, and how it is
// weaker than the trail needs (found false: there is no such stream yet).
func (c *Client) Inspect(ctx context.Context) (info *jetstream.StreamInfo, problems []Problem, found bool, err error) {
	actx, cancel := c.api(ctx)
	defer cancel()
	s, err := c.js.Stream(actx, c.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("reading stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	want := c.want
	if want.Replicas == 0 {
		want.Replicas = c.defaultReplicas()
	}
	info = s.CachedInfo()
	return info, want.Check(info.Config), true, nil
}

// WantReplicas is the replica count the stream must have.
func (c *Client) WantReplicas() int {
	if c.want.Replicas > 0 {
		return c.want.Replicas
	}
	return c.defaultReplicas()
}

// apiTimeout bounds each JetStream API request: a request sent while a
// stream has no leader (an election) is never answered, and is asked again.
// A shorter AckTimeout bounds it too: an answer is as urgent as an
// acknowledgement.
const apiTimeout = 5 * time.Second

// apiWait is how long a JetStream API request may go unanswered.
func (c *Client) apiWait() time.Duration {
	return min(apiTimeout, c.cfg.AckTimeout)
}

func (c *Client) api(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.apiWait())
}

// info opens the stream (see openStream) and reads its configuration and
// state.
func (c *Client) info(ctx context.Context) (*jetstream.StreamInfo, error) {
	s, err := c.openStream(ctx)
	if err != nil {
		return nil, err
	}
	actx, cancel := c.api(ctx)
	defer cancel()
	info, err := s.Info(actx)
	if err != nil {
		return nil, fmt.Errorf("reading the state of stream %s: %w", c.cfg.Stream, c.explainAPI(err))
	}
	return info, nil
}

// redactURLs drops user information from server URLs for messages.
func redactURLs(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				u = u[:s+3] + "REDACTED@" + u[at+1:]
			}
		}
		out[i] = u
	}
	return strings.Join(out, ",")
}
