// Package publish delivers envelopes: to the audit-stream spine over HTTP
// (Client), or as JSON lines to a writer (Writer, the built-in sink).
//
// The spine's contract is in shared/audit-stream-contract.md: POST /events
// appends one event and answers 201 with the stored event; there is no
// de-duplication, so Client reads the spine back before re-sending anything
// whose fate is unknown.
//
// Client judges each answer by what it proves, not by its status alone:
//   - An event is accepted only when the 201's body is the stored event
//     carrying the event's idempotency key. A 201 with an HTML page, a body
//     cut short or stalled, or another event leaves the append in doubt, as a
//     5xx, a 408 or a dropped connection do: the spine is read back, and the
//     event is sent again only if it is not there.
//   - 400, 413 and 422 are the spine's refusal of this event (RejectedError):
//     the caller keeps it as a dead letter.
//   - Every 3xx and every other 4xx but 408 and 429 (401, 403, 404, 405, ...)
//     is a refusal of the client as a whole — a wrong token or URL, a proxy
//     answering in the spine's place — which no event deserves to be
//     dead-lettered for: delivery is retried with backoff, the spine is
//     reported down, and the log says what to fix. Redirects are never
//     followed, so the token reaches no host but the configured one.
package publish

import (
	"context"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// Sink accepts events in order. Publish returns nil once the event is
// accepted; it retries transient failures itself until ctx ends.
type Sink interface {
	Publish(ctx context.Context, ev *envelope.Event) error
}

// DefaultKinds are the EventKind values of audit-stream v0.1, used to check a
// watch's kind when the spine cannot be asked.
var DefaultKinds = []string{
	"decision_card_drafted", "decision_card_signed", "decision_card_status_changed",
	"policy_bundle_registered", "request_denied", "request_allowed", "contract_promoted",
	"contract_deprecated", "contract_compatibility_failed", "watch_created", "watch_drifted",
	"watch_validity_flipped", "incident_filed", "remediation_planned", "attestation_verified",
	"attestation_tampered", "flag_swapped", "shadow_divergence_recorded",
	"tool_invocation_allowed", "tool_invocation_denied", "tool_invocation_required_approval",
	"other",
}
