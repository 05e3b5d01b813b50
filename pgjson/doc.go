// Package pgjson maps PostgreSQL column values to JSON, with no I/O.
//
// pgoutput sends each column value as its type's text output (the tuple
// data of https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html),
// and an audit event carries it as a JSON value: a number for integers and
// floats, a string for numeric, money, timestamps and everything without an
// exact JSON counterpart, an array for arrays, an object for composites,
// embedded JSON for json and jsonb. A Type says which (Builtin knows the
// built-in types; package catalog builds the others from pg_type), and
// AppendValue writes the value. TypeTable documents the mapping with
// examples that the tests check; the type table of docs/envelope.md ("Type
// mapping") is generated from it.
//
// It is its own package, below decode, so that the mapping can be read,
// tested and fuzzed apart from the stream that builds envelopes, and so that
// catalog can build Types without depending on the stream.
package pgjson
