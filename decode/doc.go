// Package decode turns parsed pgoutput messages into audit events, with no
// I/O: this is where a WAL message becomes an envelope.
//
// A Stream applies messages (package pgoutput parses them; the formats are
// those of
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html)
// in order, keeping the relation cache, the open transaction and the watch
// registry, and yields envelope.Event values (package envelope encodes
// them), commit markers and registry changes. Column values are mapped to
// JSON by package pgjson; the column types come from a TypeLookup (package
// catalog reads them from pg_type), which the stream asks when a RELATION
// message or a backfill chunk arrives.
//
// Each change is named by its position in the slot's history
// (envelope.Position, and the idempotency key envelope.Key builds from
// it). The spine does not de-duplicate on the key: the agent does, reading
// back which keys the spine holds (package publish). The capture features
// (annotations, the skip marker, backfill chunks and checkpoints, all
// authenticated by pgaudit_cdc.control rows) are in capture.go. Every event
// is self-linked (metadata.prev, tx_index, tx_events) so that a verifier
// can prove nothing is missing.
package decode
