// Package natsjs delivers the trail into a NATS JetStream stream: the
// destination for a trail that outgrows one audit-stream spine. JetStream
// replicates each message to a quorum of servers before it acknowledges it.
//
// # Layout
//
// One agent writes one stream, and the stream holds one subject
// (Config.Stream, Config.Subject; PGAUDIT_CDC and pgaudit.cdc by default).
// Every event of the audited database goes there in commit order, self-audit
// events and seals included, so that the trail's links (metadata.prev,
// tx_index) and seals read in one order. Several databases are several
// agents, each with a stream of its own.
//
// # Messages
//
// Each message is the spine's GovernanceEvent (event_id, timestamp, kind,
// source, payload, prev_hash, hash) in canonical JSON. event_id is the
// stream sequence the message is stored at; prev_hash is the hash of the
// chained message before it; hash is the spine's canonical hash (package
// chain), computed by the agent. A consumer, or verify, reads the same
// trail as from the spine, seals and all (Build, Parse).
//
// # Exactly once, in order
//
// Events are published asynchronously, up to Config.MaxInFlight messages
// (and MaxInFlightBytes) awaiting their acknowledgement. Each message
// carries its idempotency key as Nats-Msg-Id and the sequence the stream
// must have reached before it (Nats-Expected-Last-Sequence): since the
// stream holds one subject, that is the subject's last sequence. A message
// is stored only right after the one before it, so a retry can neither
// duplicate nor reorder. The per-subject header
// (Nats-Expected-Last-Subject-Sequence) is not used: on a replicated stream
// the server refuses a second message checked against a subject while one
// is in flight (error 10164), which would allow one message per round trip.
//
// An event is settled only on its acknowledgement, which JetStream sends
// once a quorum stored it. After any failure (a timeout, a leader election,
// a wrong-sequence answer, a lost connection) nothing is guessed: the
// stream is read, the messages at their sequences with the bytes sent are
// settled, and the rest is sent again. A message of another writer where
// one of ours was to go is reported and the chain goes on after it; a
// message under one of our Nats-Msg-Ids with other content is a forgery,
// and the real event is delivered naming it (metadata.supersedes_event_id).
//
// Outages (an unreachable cluster, refused credentials, a missing
// permission) are waited out: the agent is not ready and the database keeps
// the WAL. A stream weaker than the trail needs (Want.Check), an event over
// a size limit (SizeError) and a stream that lost its history
// (publish.HistoryLostError) stop delivery with a sentence naming the fix.
package natsjs
