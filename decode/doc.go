// Package decode turns the pgoutput logical replication protocol into
// audit events, with no I/O: Parse reads one pgoutput message (the wire
// format is described at
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html),
// and a Stream applies messages in order, keeping the relation cache, the
// open transaction and the watch registry, and yields envelopes (the spine's
// PublishRequest JSON, built by hand for speed), commit markers and registry
// changes.
//
// The value mapping (PostgreSQL text output to JSON) is in types.go and
// values.go; the capture features (annotations, the skip marker, backfill
// chunks and checkpoints, all authenticated by pgaudit_cdc.control rows) in
// capture.go. Every envelope is self-linked (metadata.prev, tx_index,
// tx_events) so that a verifier can prove nothing is missing.
package decode
