// Package pgoutput parses the messages of PostgreSQL's logical replication
// protocol as the pgoutput plugin sends them (protocol version 1, with
// logical messages, and version 2's streamed in-progress transactions),
// with no I/O: this is where a WAL message is parsed.
//
// Parse turns the bytes of one XLogData payload into a Message (BEGIN,
// COMMIT, RELATION, INSERT, UPDATE, DELETE, TRUNCATE, ...). Inside a
// stream block (STREAM START to STREAM STOP) the changes name their
// (sub)transaction: Parser.ParseStreamed reads them, and StreamedXid
// finds the transaction without parsing the rest. LSN is a WAL
// position, formatted and parsed as PostgreSQL writes it. The formats are
// those of
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html.
//
// The layering follows pgx (pgproto3 <- pgconn <- pgx): this package knows
// the wire format only; package pgjson maps column values to JSON, package
// decode turns messages into audit envelopes, and package replication
// carries the messages over the replication connection.
package pgoutput
