package catalog

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

// Querier is the part of *pgx.Conn the resolver needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// maxDepth caps how deep the resolver follows domains, array elements and
// composite fields. PostgreSQL cannot build cyclic types, so the cap is a
// guard; a type nested deeper is mapped as text.
const maxDepth = 100

// typeQuery reads one pg_type row. is_array tells a true array type (the
// one its element names as typarray) from types that merely have a typelem
// (name, point, int2vector, user-defined fixed-length vectors).
const typeQuery = `SELECT t.typname::text, n.nspname::text, t.typtype::text,
       t.typbasetype, t.typrelid, t.typelem,
       COALESCE(e.typarray = t.oid, false), COALESCE(e.typdelim::text, ',')
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
 WHERE t.oid = $1`

// fieldsQuery reads a composite type's live attributes, in order.
const fieldsQuery = `SELECT a.attname::text, a.atttypid
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`

// Resolver maps type OIDs to pgjson.Type, using pgjson.Builtin for
// built-ins and the catalog (pg_type, pg_attribute) for the rest; results
// are cached. It is the stream's decode.TypeLookup. Safe for use by one
// goroutine.
type Resolver struct {
	q     Querier
	cache map[uint32]*pgjson.Type
}

// NewResolver returns a Resolver that reads the catalog through q.
func NewResolver(q Querier) *Resolver {
	return &Resolver{q: q, cache: make(map[uint32]*pgjson.Type)}
}

// Resolve returns the Type for oid. Domains resolve to their base type's
// mapping (Kind/Elem/Delim/Fields of the base, OID/Name of the domain),
// also for domains over domains and over arrays. Enums, ranges,
// multiranges, pseudo-types and unknown user-defined base types map to
// KindText. Arrays of anything map to KindArray with Elem resolved and Delim
// from the element type's typdelim. Composite types map to KindComposite
// with Fields from pg_attribute (live attributes, ordered by attnum). An OID
// not found in pg_type maps to KindText named "unknown(OID)", without
// error, so that a type dropped since the change was written does not stop
// the stream. Errors are those of the queries (and of ctx). The returned
// Type is shared: callers must not mutate it.
func (r *Resolver) Resolve(ctx context.Context, oid uint32) (*pgjson.Type, error) {
	return r.resolve(ctx, oid, 0)
}

// Forget drops cached entries (call after a Relation message says a type
// may have changed).
func (r *Resolver) Forget() {
	clear(r.cache)
}

// typeRow is what typeQuery returns.
type typeRow struct {
	name, schema, typtype string
	base, relid, elem     uint32
	isArray               bool
	elemDelim             string
}

func (r *Resolver) resolve(ctx context.Context, oid uint32, depth int) (*pgjson.Type, error) {
	if t, ok := pgjson.Builtin(oid); ok {
		return t, nil
	}
	if t, ok := r.cache[oid]; ok {
		return t, nil
	}
	row, found, err := r.lookup(ctx, oid)
	if err != nil {
		return nil, err
	}
	if !found {
		t := &pgjson.Type{OID: oid, Name: "unknown(" + strconv.FormatUint(uint64(oid), 10) + ")", Kind: pgjson.KindText}
		r.cache[oid] = t
		return t, nil
	}
	t := &pgjson.Type{OID: oid, Name: row.name, Kind: pgjson.KindText}
	if row.schema != "pg_catalog" {
		t.Name = row.schema + "." + row.name
	}
	if depth >= maxDepth {
		// Not cached: a shallower path to the same type maps it fully.
		return t, nil
	}
	switch {
	case row.typtype == "d" && row.base != 0:
		base, err := r.resolve(ctx, row.base, depth+1)
		if err != nil {
			return nil, err
		}
		t.Kind, t.Elem, t.Delim, t.Fields = base.Kind, base.Elem, base.Delim, base.Fields
	case row.typtype == "b" && row.isArray:
		elem, err := r.resolve(ctx, row.elem, depth+1)
		if err != nil {
			return nil, err
		}
		t.Kind, t.Elem, t.Delim = pgjson.KindArray, elem, ','
		if len(row.elemDelim) == 1 {
			t.Delim = row.elemDelim[0]
		}
	case row.typtype == "c" && row.relid != 0:
		fields, err := r.fields(ctx, row.relid, depth)
		if err != nil {
			return nil, err
		}
		t.Kind, t.Fields = pgjson.KindComposite, fields
	}
	r.cache[oid] = t
	return t, nil
}

// lookup reads oid's pg_type row.
func (r *Resolver) lookup(ctx context.Context, oid uint32) (typeRow, bool, error) {
	var row typeRow
	rows, err := r.q.Query(ctx, typeQuery, oid)
	if err != nil {
		return row, false, fmt.Errorf("catalog: look up type %d: %w", oid, err)
	}
	defer rows.Close()
	found := false
	if rows.Next() {
		found = true
		if err := rows.Scan(&row.name, &row.schema, &row.typtype, &row.base, &row.relid, &row.elem, &row.isArray, &row.elemDelim); err != nil {
			return row, false, fmt.Errorf("catalog: look up type %d: %w", oid, err)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return row, false, fmt.Errorf("catalog: look up type %d: %w", oid, err)
	}
	return row, found, nil
}

// fields reads and resolves the attributes of the composite type whose
// pg_class row is relid.
func (r *Resolver) fields(ctx context.Context, relid uint32, depth int) ([]pgjson.Field, error) {
	type attr struct {
		name string
		oid  uint32
	}
	var attrs []attr
	rows, err := r.q.Query(ctx, fieldsQuery, relid)
	if err != nil {
		return nil, fmt.Errorf("catalog: read attributes of %d: %w", relid, err)
	}
	defer rows.Close()
	for rows.Next() {
		var a attr
		if err := rows.Scan(&a.name, &a.oid); err != nil {
			return nil, fmt.Errorf("catalog: read attributes of %d: %w", relid, err)
		}
		attrs = append(attrs, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: read attributes of %d: %w", relid, err)
	}
	// Resolve after the rows are closed: a connection runs one query at a
	// time.
	fields := make([]pgjson.Field, 0, len(attrs))
	for _, a := range attrs {
		ft, err := r.resolve(ctx, a.oid, depth+1)
		if err != nil {
			return nil, err
		}
		fields = append(fields, pgjson.Field{Name: a.name, Type: ft})
	}
	return fields, nil
}
