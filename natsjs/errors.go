package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// errDuplicate: an acknowledgement named a message stored earlier under
// the same ID that is not the one sent.
var errDuplicate = errors.New("the stream holds another message under this event's Nats-Msg-Id")

// SizeError is an event larger than the destination takes. Nothing after
// it is confirmed until the limit is raised.
type SizeError struct {
	Key, Table, Operation string
	Size                  int
	Limit                 int64
	What, Fix             string
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("the %s event %s on %s is %d bytes, over %s of %d bytes: %s; capture waits at this event, and nothing after it is confirmed until then",
		e.Operation, e.Key, e.Table, e.Size, e.What, e.Limit, e.Fix)
}

// StreamError is a stream weaker than the trail needs.
type StreamError struct {
	Stream   string
	Problems []Problem
}

func (e *StreamError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return fmt.Sprintf("stream %s is weaker than the audit trail needs, so pgaudit-cdc does not write to it: %s", e.Stream, strings.Join(parts, "; "))
}

// mustStop: errors the operator must act on; every other failure is an
// outage, waited out.
func mustStop(err error) bool {
	var se *SizeError
	var st *StreamError
	return errors.As(err, &se) || errors.As(err, &st) || publish.IsHistoryLost(err)
}

// explain turns a publish failure into one sentence, with what the server
// said asynchronously (a permissions violation comes that way).
func (c *Client) explain(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
		return fmt.Errorf("stream %s refused a message as over its size limit (%w): raise max_msg_size and max_payload", c.cfg.Stream, err)
	}
	if errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, nats.ErrNoResponders) {
		if p := c.asyncErr.Swap(nil); p != nil && errors.Is(*p, nats.ErrPermissionViolation) {
			return fmt.Errorf("NATS refused to let pgaudit-cdc publish to %s (%w): grant its user publish permission on %s and on the JetStream API ($JS.API.>)", c.cfg.Subject, *p, c.cfg.Subject)
		}
	}
	return err
}

func reasonOf(err error) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		return "wrong_sequence"
	case errors.Is(err, errDuplicate):
		return "duplicate"
	case errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout"
	case errors.Is(err, nats.ErrNoResponders):
		return "no_responders"
	default:
		return "connection"
	}
}
