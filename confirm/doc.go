// Package confirm holds the rule behind "nothing is confirmed early": the
// position pgaudit-cdc sends PostgreSQL as its flush position (the slot's
// confirmed_flush_lsn, below which the server may recycle WAL) is never
// beyond what the destination accepted, nor beyond what was recorded as the
// slot's progress in the database.
//
// A Tracker holds three positions:
//
//   - accepted: everything up to it was accepted by the destination or
//     stored as a dead letter; or, when nothing was pending, it is a
//     keepalive position the server reported outside a transaction. It
//     only rises (Accept; Accepted reads it).
//   - recorded: the highest position saved as the slot's progress
//     (capture.SaveProgress) before it was confirmed. It only rises
//     (Recorded; LastRecorded reads it).
//   - confirmable: min(accepted, recorded), the position that may be sent to
//     the server (Confirmable).
//
// The agent runs two goroutines per replication session. The publisher,
// which delivers events in order, calls Accept after the last event of each
// transaction is settled, and for keepalive positions. The reader, which
// owns the replication and catalog connections, calls NeedsRecord when a
// status update is due, saves the position it returns with
// capture.SaveProgress, reports it with Recorded, and sends Confirmable to
// the server. When saving fails, nothing is confirmed beyond the earlier
// record: the reader ends the session instead.
//
// Every method is safe for concurrent use; Recorded must be called only
// after the record is durable, and by one goroutine (the reader), so that
// the record in the database and the Tracker agree.
//
// The package does no I/O and knows nothing of the agent: it depends on
// package pgoutput for the LSN type only.
package confirm
