// Package envelope owns what pgaudit-cdc writes into the audit trail: the
// PublishRequest of every event as a value (Envelope), its encoding, and the
// names that identify it (Position, Key).
//
// An envelope is built as a value and then encoded, once, by Encode. Marks
// decided after the event was built (the last of its transaction, late,
// redelivered) are fields set on the value before it is encoded again; the
// encoded bytes are never edited.
//
// The encoding is the spine's canonical JSON (Python's
// json.dumps(obj, sort_keys=True, separators=(",", ":")), ensure_ascii on):
// keys sorted at every depth, no whitespace, every character outside
// printable ASCII escaped. The spine re-serialises what it stores, so an
// event's bytes as the agent sent them are exactly the canonical JSON of the
// event as the spine returns it. That is what lets the agent digest an event
// at the source for the price of one SHA-256 over its bytes, and lets a
// verifier recompute the same digest from the spine's copy (package trail).
// Row values are written canonically by package pgjson.
//
// Key, Position and ParseKey name every change of a slot: the idempotency
// key the agent's read-back looks for (the spine itself does not
// de-duplicate). Every change envelope is self-linked (metadata.prev,
// tx_index, tx_events) so that a verifier can tell that nothing is missing.
//
// The events pgaudit-cdc says of itself are built here too: GAP events
// (gap.go), the payloads of self-audit and CHECKPOINT events (capture.go;
// package decode decides when they happen). The read side is here as well:
// Parse and ParseEvent read an envelope back (a dead letter, a JetStream
// message to relay), ReadStored reads what a read-back needs of a stored
// event, and DeliveryMarks names the members a verifier leaves out of a
// digest.
package envelope
