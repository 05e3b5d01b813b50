package watches

// Publication membership. Every watched table is a member of the publication
// by itself: a per-table watch with its own row filter and column list, a
// table of a watched schema without either. Schema-wide watches do not use
// FOR TABLES IN SCHEMA, because PostgreSQL allows no column list in a
// publication with such a member, and ignores the row filter of a table whose
// schema is one: per-table membership is what lets a schema watch and every
// kind of per-table watch share the publication, with the per-table watch
// taking precedence. Tables that join a watched schema later are added by the
// DDL event trigger (migration 0007) in their DDL's transaction, and by the
// agent's housekeeping (syncSchemaMembership) where that did not happen.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// membership is how a table is a member of the publication by itself.
type membership struct {
	member    bool
	hasFilter bool
	columns   []string // the column list in column order; nil: none
}

func (m membership) plain() bool { return !m.hasFilter && m.columns == nil }

// membershipOf reads the table's own membership of the publication (not
// through a schema).
func (r *Registry) membershipOf(ctx context.Context, tx pgx.Tx, oid uint32) (membership, error) {
	var m membership
	version, err := replication.ServerVersion(ctx, tx)
	if err != nil {
		return m, err
	}
	if version < 150000 {
		// No row filters or column lists before PostgreSQL 15.
		err = tx.QueryRow(ctx, `SELECT true FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
			WHERE p.pubname = $1 AND pr.prrelid = $2`, r.publication, oid).Scan(&m.member)
	} else {
		err = tx.QueryRow(ctx, `SELECT true, pr.prqual IS NOT NULL,
				CASE WHEN pr.prattrs IS NOT NULL THEN
					(SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
					 WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[])) END
			FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
			WHERE p.pubname = $1 AND pr.prrelid = $2`, r.publication, oid).Scan(&m.member, &m.hasFilter, &m.columns)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return membership{}, nil
	}
	if err != nil {
		return membership{}, fmt.Errorf("checking publication %q: %w", r.publication, err)
	}
	return m, nil
}

// addTable makes t a member of the publication with the column list cols
// (nil: all columns) and the row filter.
func (r *Registry) addTable(ctx context.Context, tx pgx.Tx, t TableName, cols []string, rowFilter string) error {
	return r.addTableTo(ctx, tx, r.publication, t, cols, rowFilter)
}

// addTableTo is addTable for the publication pub: the publication, or
// precheck's scratch publication standing in for it (errors name the
// publication).
func (r *Registry) addTableTo(ctx context.Context, tx pgx.Tx, pub string, t TableName, cols []string, rowFilter string) error {
	name := ident.Qualified(t.Schema, t.Name)
	// ONLY: its inheritance children are watched, and published, as
	// themselves (migration 0015); without it they would be added too, or
	// refused as members already.
	clause := " ADD TABLE ONLY " + pgx.Identifier{t.Schema, t.Name}.Sanitize()
	if len(cols) > 0 {
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		clause += " (" + strings.Join(quoted, ", ") + ")"
	}
	if rowFilter != "" {
		clause += " WHERE (" + rowFilter + ")"
	}
	sql := "ALTER PUBLICATION " + pgx.Identifier{pub}.Sanitize() + clause
	// The extended protocol runs exactly one statement: a --where
	// expression cannot smuggle in a second one. It could close the
	// parenthesis and name more tables or schemas in the same statement,
	// though: checkRowFilter tries it on a private publication first.
	if rowFilter != "" {
		if err := r.checkRowFilter(ctx, tx, t, clause); err != nil {
			return err
		}
	}
	if _, err := tx.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Close(); err != nil {
		if rowFilter != "" || len(cols) > 0 {
			return denied(fmt.Sprintf("adding %s to publication %q with the given --where/--columns", name, r.publication), err)
		}
		return denied(fmt.Sprintf("adding %s to publication %q", name, r.publication), err)
	}
	return nil
}

// checkRowFilter runs "ALTER PUBLICATION <scratch>" + addClause (the ADD
// TABLE clause with the --where expression) on a publication of its own,
// inside a savepoint that is always rolled back, and refuses an expression
// with which the publication gains anything but table t: no other session
// touches that publication, so the count is exact.
func (r *Registry) checkRowFilter(ctx context.Context, tx pgx.Tx, t TableName, addClause string) (err error) {
	name := ident.Qualified(t.Schema, t.Name)
	if _, err := tx.Exec(ctx, "SAVEPOINT pgaudit_cdc_where"); err != nil {
		return fmt.Errorf("checking the --where expression for %s: %w", name, err)
	}
	defer func() {
		if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT pgaudit_cdc_where"); rerr != nil && err == nil {
			err = fmt.Errorf("checking the --where expression for %s: %w", name, rerr)
		}
	}()
	scratch := fmt.Sprintf("pgaudit_cdc_where_%d", r.conn.PgConn().PID())
	createErr, err := r.createScratch(ctx, tx, scratch)
	if err != nil {
		return err
	}
	if err := createErr; err != nil {
		return denied(fmt.Sprintf("checking the --where expression for %s (a scratch publication, rolled back)", name), err)
	}
	if _, err := tx.Conn().PgConn().ExecParams(ctx, "ALTER PUBLICATION "+pgx.Identifier{scratch}.Sanitize()+addClause, nil, nil, nil, nil).Close(); err != nil {
		return denied(fmt.Sprintf("adding %s to publication %q with the given --where/--columns", name, r.publication), err)
	}
	var others, schemas int
	if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE r.prrelid <> $2::regclass),
			(SELECT count(*) FROM pg_publication_namespace n WHERE n.pnpubid = p.oid)
		FROM pg_publication p LEFT JOIN pg_publication_rel r ON r.prpubid = p.oid
		WHERE p.pubname = $1 GROUP BY p.oid`, scratch, pgx.Identifier{t.Schema, t.Name}.Sanitize()).Scan(&others, &schemas); err != nil {
		return fmt.Errorf("checking the --where expression for %s: %w", name, err)
	}
	if others != 0 || schemas != 0 {
		return fmt.Errorf("the --where expression for %s is not a single expression: with it the statement also adds %d other table(s) and %d schema(s) to the publication; pass one boolean expression over the table's columns", name, others, schemas)
	}
	return nil
}

func (r *Registry) dropTable(ctx context.Context, tx pgx.Tx, t TableName) error {
	// ONLY: its inheritance children keep their own watches.
	sql := "ALTER PUBLICATION " + pgx.Identifier{r.publication}.Sanitize() + " DROP TABLE ONLY " + pgx.Identifier{t.Schema, t.Name}.Sanitize()
	if _, err := tx.Exec(ctx, sql); err != nil {
		return denied(fmt.Sprintf("removing %s from publication %q", ident.Qualified(t.Schema, t.Name), r.publication), err)
	}
	return nil
}

// schemaWatched reports whether schema has an active schema-wide watch.
func schemaWatched(ctx context.Context, tx pgx.Tx, schema string) (bool, error) {
	var watched bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches WHERE schema_name = $1 AND active)`, schema).Scan(&watched)
	if err != nil {
		return false, fmt.Errorf("checking the schema-wide watch of %q: %w", schema, err)
	}
	return watched, nil
}

// alterIdentity sets the REPLICA IDENTITY (DEFAULT, FULL or NOTHING) of
// schema.table; doing names the step in the error a refusal becomes (see
// denied).
func alterIdentity(ctx context.Context, tx pgx.Tx, schema, table, identity, doing string) error {
	if _, err := tx.Exec(ctx, "ALTER TABLE "+pgx.Identifier{schema, table}.Sanitize()+" REPLICA IDENTITY "+identity); err != nil {
		return denied(doing, err)
	}
	return nil
}

// denied wraps err, saying what failed, and gives the privilege fix only when
// PostgreSQL said a privilege was missing (SQLSTATE 42501).
func denied(what string, err error) error {
	if replication.IsCode(err, pgerrcode.InsufficientPrivilege) {
		return fmt.Errorf("%s: permission denied: the role needs USAGE on the table's schema and must own the table and the publication (membership in the owner's role counts: GRANT owner_role TO the role): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// legacyConflict refuses, before anything changes, a per-table watch that a
// publication made by an earlier version cannot carry: one with FOR TABLES IN
// SCHEMA members (listed in legacy) may hold no column list, and ignores the
// row filter of a table in such a schema. EnsurePublication converts such a
// publication when the role may; this is what is left when it could not.
func (r *Registry) legacyConflict(legacy []string, t TableName, o Options) error {
	fix := fmt.Sprintf("convert the publication to per-table membership: run any `pgaudit-cdc watch` or `pgaudit-cdc run` once as a role that owns publication %q and every table of schema(s) %s (a superuser does), then watch again",
		r.publication, strings.Join(legacy, ", "))
	name := ident.Qualified(t.Schema, t.Name)
	if o.columnControl() && len(legacy) > 0 {
		return fmt.Errorf("cannot watch %s with --columns/--exclude-columns: publication %q holds schema(s) %s as FOR TABLES IN SCHEMA (made by an earlier version of pgaudit-cdc), and PostgreSQL allows no column list in such a publication; %s",
			name, r.publication, strings.Join(legacy, ", "), fix)
	}
	if o.RowFilter != "" && slices.Contains(legacy, t.Schema) {
		return fmt.Errorf("cannot watch %s with --where: publication %q holds its schema %q as FOR TABLES IN SCHEMA (made by an earlier version of pgaudit-cdc), and PostgreSQL ignores the row filter of a table in such a schema; %s",
			name, r.publication, t.Schema, fix)
	}
	return nil
}

// syncSchemaMembership adds the tables of watched schemas that are not yet
// members of the publication (created while no event trigger was installed,
// or when it failed), giving them REPLICA IDENTITY FULL first. It returns the
// tables added, those whose identity it changed, and the added tables that
// have virtual generated columns (PostgreSQL 18+), which keep their primary
// key as identity (see virtual.go); tables with virtual generated columns
// and no primary key are added too, never left out (PostgreSQL refuses their
// UPDATE and DELETE; relieveVirtualColumns names them with the fixes). It
// skips the round when a watch or unwatch holds the registry lock.
func (r *Registry) syncSchemaMembership(ctx context.Context) (added, identity, virtual []string, err error) {
	tx, err := r.housekeepingTx(ctx)
	if tx == nil || err != nil {
		return nil, nil, nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	rows, err := tx.Query(ctx, `SELECT schema_name FROM pgaudit_cdc.schema_watches WHERE active ORDER BY 1`)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing watched schemas: %w", err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listing watched schemas: %w", err)
	}
	if len(schemas) == 0 {
		return nil, nil, nil, nil
	}
	legacy, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, schema := range schemas {
		if slices.Contains(legacy, schema) {
			continue // published through the schema
		}
		tables, keyed, err := r.schemaTablesToAdd(ctx, tx, schema)
		if err != nil {
			return nil, nil, nil, err
		}
		virtual = append(virtual, keyed...)
		if len(tables) == 0 {
			continue
		}
		fixed, err := fixSchemaTables(ctx, tx, schema)
		if err != nil {
			return nil, nil, nil, err
		}
		identity = append(identity, fixed...)
		names := make([]string, len(tables))
		for i, t := range tables {
			names[i] = ident.Qualified(t[0], t[1])
		}
		if err := replication.AddTables(ctx, tx, r.publication, tables); err != nil {
			return nil, nil, nil, denied(fmt.Sprintf("adding the new tables of watched schema %q (%s) to publication %q", schema, strings.Join(names, ", "), r.publication), err)
		}
		added = append(added, names...)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, nil, fmt.Errorf("committing the tables of watched schemas: %w", err)
	}
	return added, identity, virtual, nil
}

// Partitions. The publication has publish_via_partition_root: the changes
// of a partition whose partitioned table (an ancestor) is in the publication
// are published as that table's, with that table's row filter and column
// list. A row filter or column list of the partition's own watch would then
// be ignored, so a watch or schema watch that leads there is refused before
// anything changes.

// filteredOptions says whether o puts a row filter or column list on the
// table.
func filteredOptions(o Options) bool { return o.RowFilter != "" || o.columnControl() }

// publishedAncestor returns a partitioned table of which oid is a partition
// and that is a member of the publication by itself.
func (r *Registry) publishedAncestor(ctx context.Context, tx pgx.Tx, oid uint32) (string, bool, error) {
	var schema, name string
	err := tx.QueryRow(ctx, `SELECT n.nspname, c.relname FROM pg_partition_ancestors($1::oid::regclass) a
		JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE a.relid <> $1::oid::regclass AND EXISTS (SELECT 1 FROM pg_publication_rel pr
			JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $2 AND pr.prrelid = a.relid)
		LIMIT 1`, oid, r.publication).Scan(&schema, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("checking the partitioned tables above table %d: %w", oid, err)
	}
	return ident.Qualified(schema, name), true, nil
}

// filteredPartition returns a partition of the partitioned tables that
// match (by oid, or by schema when oid is 0) whose own watch has a row
// filter or column list, and that partitioned table.
func filteredPartition(ctx context.Context, tx pgx.Tx, oid uint32, schema string) (root, partition string, found bool, err error) {
	var rs, rn, ps, pn string
	err = tx.QueryRow(ctx, `SELECT rn.nspname, r.relname, n.nspname, c.relname
		FROM pg_class r JOIN pg_namespace rn ON rn.oid = r.relnamespace
		CROSS JOIN LATERAL pg_partition_tree(r.oid::regclass) pt
		JOIN pgaudit_cdc.watches w ON w.table_oid = pt.relid AND w.active
			AND (w.row_filter IS NOT NULL OR w.columns IS NOT NULL OR w.exclude_columns IS NOT NULL)
		JOIN pg_class c ON c.oid = pt.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE r.relkind = 'p' AND pt.relid <> r.oid AND (r.oid = $1 OR ($1 = 0 AND rn.nspname = $2))
		LIMIT 1`, oid, schema).Scan(&rs, &rn, &ps, &pn)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("checking the watches of partitions: %w", err)
	}
	return ident.Qualified(rs, rn), ident.Qualified(ps, pn), true, nil
}

// partitionConflict refuses a per-table watch whose row filter or column
// list publish_via_partition_root would override, in either direction.
// Without the registry (registry false) no partition is watched yet.
func (r *Registry) partitionConflict(ctx context.Context, tx pgx.Tx, rel relation, name string, o Options, registry bool) error {
	if filteredOptions(o) {
		ancestor, found, err := r.publishedAncestor(ctx, tx, rel.oid)
		if err != nil {
			return err
		}
		if found {
			return fmt.Errorf("cannot watch %s with --where/--columns/--exclude-columns: it is a partition of %s, which is in the publication, and PostgreSQL then publishes the partition's changes as %s's, with its row filter and column list; unwatch %s (or its schema) first, or put the options on it",
				name, ancestor, ancestor, ancestor)
		}
	}
	if rel.partitioned && registry {
		_, partition, found, err := filteredPartition(ctx, tx, rel.oid, "")
		if err != nil {
			return err
		}
		if found {
			return fmt.Errorf("cannot watch %s: its partition %s is watched with --where/--columns/--exclude-columns, which PostgreSQL would ignore once %s is in the publication (a partition's changes are then published as its partitioned table's); unwatch %s first, or watch the other partitions one by one",
				name, partition, name, partition)
		}
	}
	return nil
}
