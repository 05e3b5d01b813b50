// Package publish delivers envelopes: to the audit-stream spine over HTTP
// (Client), or as JSON lines to a writer (Writer, the built-in sink).
//
// The spine's contract is in shared/audit-stream-contract.md: POST /events
// appends one event and answers 201; there is no de-duplication, so Client
// reads the spine back before re-sending anything whose fate is unknown.
package publish

import (
	"context"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
)

// Sink accepts events in order. Publish returns nil once the event is
// accepted; it retries transient failures itself until ctx ends.
type Sink interface {
	Publish(ctx context.Context, ev *decode.Event) error
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
