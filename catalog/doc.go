// Package catalog resolves column type OIDs to their JSON mapping
// (pgjson.Type): from pgjson.Builtin for built-in types, and from the
// PostgreSQL system catalogs (pg_type, pg_attribute) for everything else.
//
// pgoutput names a column's type by OID only (the RELATION message of
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html);
// its Resolver is the decode.TypeLookup the agent's stream asks when a
// RELATION message or a backfill chunk arrives. It holds the I/O, so that
// packages pgjson and decode stay pure.
package catalog
