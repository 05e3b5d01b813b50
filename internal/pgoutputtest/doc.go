// Package pgoutputtest builds pgoutput messages for tests: the bytes a
// walsender sends, in the formats of
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html.
// The parser's tests (package pgoutput) and the stream's (package decode)
// share it.
package pgoutputtest
