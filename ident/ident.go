// Package ident writes PostgreSQL identifiers: the way pgaudit-cdc names
// tables to people and in events (Quote, Qualified: double-quoted only
// where a plain lower-case identifier would not read back as the same
// name), and always quoted for SQL written out as text (SQL: fix sentences,
// setup scripts, replication options). Statements sent to the server quote
// with pgx.Identifier.Sanitize, which SQL is.
package ident

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// SQL writes parts as one SQL identifier (schema.table for two), each part
// double-quoted, so that any name, a keyword or one with quotes in it,
// reads back as itself.
func SQL(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// Qualified writes schema.table, double-quoting either part unless it is a
// plain lower-case identifier, so that the result is unambiguous and matches
// what users type for ordinary names ("public.decisions").
func Qualified(schema, table string) string {
	return Quote(schema) + "." + Quote(table)
}

// Quote double-quotes s unless it is a plain lower-case identifier.
func Quote(s string) string {
	plain := s != ""
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case (c >= '0' && c <= '9') && i > 0:
		default:
			plain = false
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
