// Package replication is pgaudit-cdc's side of PostgreSQL's streaming
// replication protocol in logical mode
// (https://www.postgresql.org/docs/current/protocol-replication.html): the
// replication connection (IDENTIFY_SYSTEM, START_REPLICATION with pgoutput,
// standby status updates), and the slot and publication it streams from.
//
// Whether a slot may be created or must be reported as a gap is decided by
// package capture, never here.
package replication
