package watches

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// SchemaEntry is a schema-wide watch.
type SchemaEntry struct {
	Schema    string
	Kind      string
	Source    string
	Active    bool
	CreatedAt time.Time
	ChangedBy string
}

// WatchSchema audits every table of schema, including tables created later.
// Each table becomes a member of the publication by itself (not FOR TABLES
// IN SCHEMA, see membership.go), so the schema watch combines with per-table
// watches of any kind; a per-table watch of a table in it takes precedence,
// and its membership (row filter, column list) is left as it is. Existing
// tables get REPLICA IDENTITY FULL now; tables created later join the
// publication and get it from the DDL event trigger, in the transaction that
// creates them, or else from the agent's housekeeping.
//
// Per-table membership needs nothing PostgreSQL 14 lacks: the schema watch
// works there too (beside plain and --on-columns per-table watches, the only
// kinds 14 has: row filters and column lists need 15).
func (r *Registry) WatchSchema(ctx context.Context, schema, kind, source string) error {
	if schema == migrations.Schema {
		return errors.New("the pgaudit_cdc schema cannot be watched")
	}
	if kind == "" || source == "" {
		return errors.New("a watch needs a kind and a non-empty source")
	}
	migrated, err := r.precheck(ctx, func(tx pgx.Tx, registry bool) error {
		if err := r.convertInDryRun(ctx, tx); err != nil {
			return err
		}
		if err := checkSchema(ctx, tx, schema, registry); err != nil {
			return err
		}
		return r.trySchemaMembership(ctx, tx, schema)
	})
	if err != nil {
		return err
	}
	if err := r.prepare(ctx, migrated); err != nil {
		return err
	}
	tx, err := r.lockedTx(ctx, "watch")
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	// The checks again, under the registry lock.
	if err := checkSchema(ctx, tx, schema, true); err != nil {
		return err
	}
	if _, err := fixSchemaTables(ctx, tx, schema); err != nil {
		return err
	}
	legacy, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil {
		return err
	}
	// A schema still published FOR TABLES IN SCHEMA (an earlier version's
	// watch, not converted) is covered already.
	if !slices.Contains(legacy, schema) {
		tables, _, err := r.schemaTablesToAdd(ctx, tx, schema)
		if err != nil {
			return err
		}
		if err := replication.AddTables(ctx, tx, r.publication, tables); err != nil {
			return denied(fmt.Sprintf("adding the tables of schema %q to publication %q", schema, r.publication), err)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO pgaudit_cdc.schema_watches AS w (schema_name, kind, source, active, changed_by)
		VALUES ($1, $2, $3, true, current_user)
		ON CONFLICT (schema_name) DO UPDATE SET kind = EXCLUDED.kind, source = EXCLUDED.source, active = true,
			changed_by = current_user, updated_at = now()
		WHERE (w.kind, w.source, w.active) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.source, true)`, schema, kind, source)
	if err != nil {
		return fmt.Errorf("registering the watch of schema %q: %w", schema, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the watch of schema %q: %w", schema, err)
	}
	return nil
}

// checkSchema runs the checks that can refuse the watch of schema. registry
// says whether the pgaudit_cdc registry exists (it does not before the first
// watch of a database).
func checkSchema(ctx context.Context, tx pgx.Tx, schema string, registry bool) error {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return fmt.Errorf("looking up schema %q: %w", schema, err)
	}
	if !exists {
		return fmt.Errorf("schema %q does not exist: create it first, or check the name (it is case-sensitive): %w", schema, ErrTableNotFound)
	}
	if registry {
		// publish_via_partition_root would override the row filter or
		// column list of a partition of a partitioned table of the schema.
		if root, partition, found, err := filteredPartition(ctx, tx, 0, schema); err != nil {
			return err
		} else if found {
			return fmt.Errorf("cannot watch schema %q: partition %s of its table %s is watched with --where/--columns/--exclude-columns, which PostgreSQL would ignore once %s is in the publication (a partition's changes are then published as its partitioned table's); unwatch %s first, or watch the tables of the schema one by one",
				schema, partition, root, root, partition)
		}
	}
	// PostgreSQL 18's virtual generated columns cannot be published: with
	// the REPLICA IDENTITY FULL the schema watch gives its tables, such a
	// table would refuse every UPDATE and DELETE. A table watched by itself
	// is left as its watch made it (the per-table watch takes precedence).
	// Re-watching a watched schema (a new kind or source) is not refused:
	// its tables that got such columns later kept their primary key as
	// identity, with a warning, or (without one, and without the event
	// trigger, which refuses such DDL) are published and refuse UPDATE and
	// DELETE, named by housekeeping (see virtual.go).
	if registry {
		if watched, err := schemaWatched(ctx, tx, schema); err != nil || watched {
			return err
		}
	}
	virtual, err := virtualColumnsOf(ctx, tx, schema, registry)
	if err != nil {
		return err
	}
	if len(virtual) > 0 {
		var named, fixes []string
		for _, v := range virtual {
			named = append(named, v.table+" ("+strings.Join(v.columns, ", ")+")")
			if v.hasKey {
				fixes = append(fixes, fmt.Sprintf("`pgaudit-cdc watch %s --kind KIND --source SOURCE --exclude-columns %s`", v.table, strings.Join(v.columns, ",")))
			} else {
				fixes = append(fixes, fmt.Sprintf("%s has no primary key, which --exclude-columns needs: add one first", v.table))
			}
		}
		verb := "have"
		if len(virtual) == 1 {
			verb = "has"
		}
		return fmt.Errorf("cannot watch schema %q: %s %s virtual generated columns, which PostgreSQL cannot publish: with the REPLICA IDENTITY FULL a schema watch gives its tables, PostgreSQL would refuse every UPDATE and DELETE on them. Watch those tables by themselves first, with --exclude-columns naming the virtual columns (a per-table watch takes precedence over the schema watch): %s; or make the columns STORED (drop and add them again with STORED); then watch the schema again",
			schema, strings.Join(named, ", "), verb, strings.Join(fixes, "; "))
	}
	return nil
}

// virtualTable is a table with virtual generated columns.
type virtualTable struct {
	table   string // schema.table, quoted where needed
	columns []string
	hasKey  bool
}

// virtualColumnsOf lists the tables of schema that a schema watch would
// publish (tables and partitioned tables, partitions included, not unlogged)
// and that have virtual generated columns (PostgreSQL 18+), except, when the
// registry exists, those watched by themselves.
func virtualColumnsOf(ctx context.Context, tx pgx.Tx, schema string, registry bool) ([]virtualTable, error) {
	if version, err := replication.ServerVersion(ctx, tx); err != nil || version < 180000 {
		return nil, err
	}
	watched := ""
	if registry {
		watched = " AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.active AND w.table_oid = c.oid)"
	}
	rows, err := tx.Query(ctx, `SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum),
			EXISTS (SELECT 1 FROM pg_index pk WHERE pk.indrelid = c.oid AND pk.indisprimary)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v'
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'`+watched+`
		GROUP BY c.oid, n.nspname, c.relname ORDER BY c.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("reading the generated columns of the tables of schema %q: %w", schema, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (virtualTable, error) {
		var s, n string
		var v virtualTable
		err := row.Scan(&s, &n, &v.columns, &v.hasKey)
		v.table = ident.Qualified(s, n)
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the generated columns of the tables of schema %q: %w", schema, err)
	}
	return out, nil
}

// trySchemaMembership adds the tables of schema to the publication in
// precheck's transaction (rolled back) as the schema watch will, or to a
// scratch publication before the real one exists, so that PostgreSQL checks
// that the role may before anything is created.
func (r *Registry) trySchemaMembership(ctx context.Context, tx pgx.Tx, schema string) error {
	exists, err := r.publicationExists(ctx, tx)
	if err != nil {
		return err
	}
	pub := r.publication
	if !exists {
		if pub, err = r.scratchPublication(ctx, tx); err != nil {
			return err
		}
	} else if legacy, err := replication.SchemaMembers(ctx, tx, r.publication); err != nil {
		return err
	} else if slices.Contains(legacy, schema) {
		return nil // covered already
	}
	tables, _, err := r.schemaTablesToAdd(ctx, tx, schema)
	if err != nil {
		return err
	}
	if err := replication.AddTables(ctx, tx, pub, tables); err != nil {
		return denied(fmt.Sprintf("adding the tables of schema %q to publication %q", schema, r.publication), err)
	}
	return nil
}

// UnwatchSchema removes a schema-wide watch; it reports whether one was
// active. The tables of the schema leave the publication, except those with
// a per-table watch, which stay as they are.
func (r *Registry) UnwatchSchema(ctx context.Context, schema string) (bool, error) {
	return r.unwatch(ctx, fmt.Sprintf("schema %q", schema), func(tx pgx.Tx) (bool, error) { return r.unwatchSchema(ctx, tx, schema) })
}

// unwatchSchema is UnwatchSchema's part in the registry transaction.
func (r *Registry) unwatchSchema(ctx context.Context, tx pgx.Tx, schema string) (bool, error) {
	legacy, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil {
		return false, err
	}
	pub := pgx.Identifier{r.publication}.Sanitize()
	if slices.Contains(legacy, schema) {
		if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLES IN SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return false, denied(fmt.Sprintf("removing schema %q from publication %q", schema, r.publication), err)
		}
	}
	tag, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.schema_watches SET active = false, changed_by = current_user, updated_at = now()
		WHERE schema_name = $1 AND active`, schema)
	if err != nil {
		return false, fmt.Errorf("unregistering schema %q: %w", schema, err)
	}
	if tag.RowsAffected() > 0 {
		// The tables that are members only for the schema watch.
		rows, err := tx.Query(ctx, `SELECT n.nspname, c.relname FROM pg_publication_rel pr
			JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE p.pubname = $1 AND n.nspname = $2
				AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.active AND w.table_oid = c.oid)
			ORDER BY c.oid`, r.publication, schema)
		if err != nil {
			return false, fmt.Errorf("listing the tables of schema %q in publication %q: %w", schema, r.publication, err)
		}
		tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
			var s, t string
			err := row.Scan(&s, &t)
			return "ONLY " + pgx.Identifier{s, t}.Sanitize(), err
		})
		if err != nil {
			return false, fmt.Errorf("listing the tables of schema %q in publication %q: %w", schema, r.publication, err)
		}
		if len(tables) > 0 {
			if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLE "+strings.Join(tables, ", ")); err != nil {
				return false, denied(fmt.Sprintf("removing the tables of schema %q from publication %q", schema, r.publication), err)
			}
		}
	}
	return tag.RowsAffected() > 0, nil
}

// fixSchemaTables sets REPLICA IDENTITY FULL on the tables of schema that
// lack it (partitions included), except those with virtual generated
// columns, which FULL would make refuse every UPDATE and DELETE (see
// virtual.go).
func fixSchemaTables(ctx context.Context, tx pgx.Tx, schema string) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f' AND c.relpersistence = 'p'
			AND c.oid NOT IN (SELECT table_oid FROM pgaudit_cdc.watches
				WHERE active AND (columns IS NOT NULL OR exclude_columns IS NOT NULL))
			AND NOT `+hasVirtualColumns, schema)
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q: %w", schema, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q: %w", schema, err)
	}
	var fixed []string
	for _, n := range names {
		if err := alterIdentity(ctx, tx, schema, n, "FULL", "setting REPLICA IDENTITY FULL on "+ident.Qualified(schema, n)); err != nil {
			return fixed, err
		}
		fixed = append(fixed, ident.Qualified(schema, n))
	}
	return fixed, nil
}

// LoadSchemas reads the schema-wide watches.
func LoadSchemas(ctx context.Context, conn *pgx.Conn, all bool) ([]SchemaEntry, error) {
	return readRows(ctx, conn, "schema watches", func(row pgx.CollectableRow) (SchemaEntry, error) {
		var e SchemaEntry
		err := row.Scan(&e.Schema, &e.Kind, &e.Source, &e.Active, &e.CreatedAt, &e.ChangedBy)
		return e, err
	}, `SELECT schema_name, kind, source, active, created_at, changed_by
		FROM pgaudit_cdc.schema_watches WHERE active OR $1 ORDER BY schema_name`, all)
}

// SchemaMap turns schema entries into the decoder's schema watch map.
func SchemaMap(entries []SchemaEntry) map[string]decode.Watch {
	m := make(map[string]decode.Watch, len(entries))
	for _, e := range entries {
		m[e.Schema] = decode.Watch{Kind: e.Kind, Source: e.Source, Active: e.Active}
	}
	return m
}

// EventTriggerName is the event trigger giving tables that join a watch
// later REPLICA IDENTITY FULL in the transaction that creates them.
const EventTriggerName = "pgaudit_cdc_replica_identity"

// EventTriggerSQL creates the event triggers (superuser only): one that gives
// tables joining a watch REPLICA IDENTITY FULL and follows renames, one that
// ends the watch of a dropped table, two that put back the TRUNCATE trigger
// of a watched partition that an ALTER TABLE, a CREATE OR REPLACE TRIGGER or
// a drop took away, and one that records DDL rewriting a watched table's
// values, all in the DDL's own transaction.
const EventTriggerSQL = eventTriggerDDL + ";\n" + dropTriggerDDL + ";\n" + truncateDDLDDL + ";\n" + triggerDroppedDDL + ";\n" + tableRewriteDDL

// EventTriggerNames are the event triggers EventTriggerSQL creates.
var EventTriggerNames = []string{EventTriggerName, DropTriggerName, TruncateDDLName, TriggerDroppedName, TableRewriteName}

const (
	eventTriggerDDL = `CREATE EVENT TRIGGER ` + EventTriggerName + ` ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION pgaudit_cdc.ensure_replica_identity()`
	// DropTriggerName is the sql_drop event trigger.
	DropTriggerName = "pgaudit_cdc_on_sql_drop"
	dropTriggerDDL  = `CREATE EVENT TRIGGER ` + DropTriggerName + ` ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION pgaudit_cdc.on_sql_drop()`
	// TruncateDDLName is the event trigger on CREATE TABLE, ALTER TABLE and
	// CREATE TRIGGER, and TriggerDroppedName the sql_drop one without a tag
	// filter: a trigger also goes with what it depends on (migration 0019).
	// Event triggers of one event fire in name order: TruncateDDLName's
	// after EventTriggerName's, which records new partitions.
	TruncateDDLName = "pgaudit_cdc_truncate_triggers"
	truncateDDLDDL  = `CREATE EVENT TRIGGER ` + TruncateDDLName + ` ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TRIGGER')
    EXECUTE FUNCTION pgaudit_cdc.on_truncate_ddl()`
	TriggerDroppedName = "pgaudit_cdc_truncate_trigger_dropped"
	triggerDroppedDDL  = `CREATE EVENT TRIGGER ` + TriggerDroppedName + ` ON sql_drop
    EXECUTE FUNCTION pgaudit_cdc.on_trigger_dropped()`
	// TableRewriteName is the table_rewrite event trigger (migration 0020).
	TableRewriteName = "pgaudit_cdc_table_rewrite"
	tableRewriteDDL  = `CREATE EVENT TRIGGER ` + TableRewriteName + ` ON table_rewrite
    EXECUTE FUNCTION pgaudit_cdc.on_table_rewrite()`
)

// EnsureEventTrigger creates the event triggers that are missing when the
// role is a superuser. It reports whether all exist afterwards.
func EnsureEventTrigger(ctx context.Context, conn *pgx.Conn) (bool, error) {
	all := true
	for _, trig := range []struct{ name, ddl string }{{EventTriggerName, eventTriggerDDL}, {DropTriggerName, dropTriggerDDL}, {TruncateDDLName, truncateDDLDDL}, {TriggerDroppedName, triggerDroppedDDL}, {TableRewriteName, tableRewriteDDL}} {
		var exists, super bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1),
				(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)`, trig.name).Scan(&exists, &super); err != nil {
			return false, fmt.Errorf("checking the event trigger: %w", err)
		}
		if exists {
			continue
		}
		if !super {
			all = false
			continue
		}
		if _, err := conn.Exec(ctx, trig.ddl); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.DuplicateObject { // created concurrently
				continue
			}
			return false, fmt.Errorf("creating the event trigger %s: %w", trig.name, err)
		}
	}
	return all, nil
}
