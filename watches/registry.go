// Package watches manages the watch registry: which tables are audited, with
// which kind and source. The registry is a table in the audited database
// (pgaudit_cdc.watches) that travels through the same publication as the
// data, so a running agent applies watch, re-watch and unwatch in commit
// order relative to the changes around them.
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

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// lockKey serialises registry and publication membership changes across CLI
// calls and the agent.
const lockKey = replication.RegistryLockKey

// Registry changes watches in one database.
type Registry struct {
	conn        *pgx.Conn
	publication string
	slot        string
}

// NewRegistry returns a registry for conn, managing publication and slot.
func NewRegistry(conn *pgx.Conn, publication, slot string) *Registry {
	return &Registry{conn: conn, publication: publication, slot: slot}
}

// prepare brings the schema up to date (unless migrated says precheck did)
// and makes sure the publication, the slot (so that capture starts now) and,
// for a superuser, the event trigger exist. Slot creation waits for writing
// transactions, so it happens before the registry transaction. It runs only
// after precheck accepted the watch: a refused watch creates nothing, above
// all no slot, which would retain WAL.
func (r *Registry) prepare(ctx context.Context, migrated bool) error {
	if !migrated {
		if _, err := migrations.Apply(ctx, r.conn); err != nil {
			return err
		}
	}
	if err := replication.EnsurePublication(ctx, r.conn, r.publication); err != nil {
		return err
	}
	// The slot exists from the first watch on, so capture starts now. Only
	// package capture creates it: a slot lost after capture started is a
	// gap (a *capture.GapError), not something to re-create quietly.
	sys, timeline, err := replication.Identify(ctx, r.conn.Config().ConnString())
	if err != nil {
		return err
	}
	if _, err := capture.Ensure(ctx, r.conn, capture.Options{Slot: r.slot, SystemID: sys, Timeline: timeline}); err != nil {
		return err
	}
	_, err = EnsureEventTrigger(ctx, r.conn)
	return err
}

// precheck runs check, every test that can refuse a watch, before prepare
// creates anything, in a transaction that is always rolled back. When the
// database has the pgaudit_cdc registry, it is migrated first (so that the
// checks read an up-to-date registry) and check is told so (registry true);
// on a fresh database there is no registry and so no watch to conflict with,
// and nothing at all is created unless the checks pass. It reports whether
// it migrated. The registry transaction repeats the checks.
func (r *Registry) precheck(ctx context.Context, check func(tx pgx.Tx, registry bool) error) (migrated bool, err error) {
	var registry bool
	if err := r.conn.QueryRow(ctx, "SELECT to_regclass('pgaudit_cdc.schema_migrations') IS NOT NULL").Scan(&registry); err != nil {
		return false, fmt.Errorf("looking for the pgaudit_cdc registry: %w", err)
	}
	if registry {
		if _, err := migrations.Apply(ctx, r.conn); err != nil {
			return false, err
		}
	}
	// Under the registry lock, like the registry transaction: the checks
	// see no watch half done. The lock is released before prepare, whose
	// slot creation waits for transactions that wrote.
	tx, err := r.lockedTx(ctx, "checking")
	if err != nil {
		return registry, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // always rolled back: nothing it does may stay
	return registry, check(tx, registry)
}

// convertInDryRun does in precheck's transaction (rolled back) what
// prepare's replication.EnsurePublication does first when the role may:
// convert the FOR TABLES IN SCHEMA members of a publication made by an
// earlier version to per-table membership (replication.
// ConvertSchemaMembership), so that the checks see the publication as the
// watch will find it. A role that may not convert changes nothing here
// either, and the checks refuse what needs the conversion.
func (r *Registry) convertInDryRun(ctx context.Context, tx pgx.Tx) error {
	schemas, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil || len(schemas) == 0 {
		return err
	}
	var allowed bool
	if err := tx.QueryRow(ctx, `SELECT pg_has_role(p.pubowner, 'USAGE') AND NOT EXISTS (
			SELECT 1 FROM pg_publication_namespace pn JOIN pg_class c ON c.relnamespace = pn.pnnspid
			WHERE pn.pnpubid = p.oid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
				AND NOT pg_has_role(c.relowner, 'USAGE'))
		FROM pg_publication p WHERE p.pubname = $1`, r.publication).Scan(&allowed); err != nil {
		return fmt.Errorf("checking the ownership of publication %q and its tables: %w", r.publication, err)
	}
	if !allowed {
		return nil
	}
	pub := pgx.Identifier{r.publication}.Sanitize()
	for _, schema := range schemas {
		tables, err := replication.SchemaTablesOutside(ctx, tx, r.publication, schema)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLES IN SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("converting schema %q of publication %q to per-table membership: %w", schema, r.publication, err)
		}
		if err := replication.AddTables(ctx, tx, r.publication, tables); err != nil {
			return fmt.Errorf("converting schema %q of publication %q to per-table membership: %w", schema, r.publication, err)
		}
	}
	return nil
}

// publicationExists reports whether the publication exists.
func (r *Registry) publicationExists(ctx context.Context, tx pgx.Tx) (bool, error) {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", r.publication).Scan(&exists); err != nil {
		return false, fmt.Errorf("looking up publication %q: %w", r.publication, err)
	}
	return exists, nil
}

// scratchPublication creates, in precheck's transaction (rolled back), a
// publication with the options of the real one that stands in for it before
// it exists: PostgreSQL checks the tables' ownership, row filters and column
// lists when they are added to it. It returns its name.
func (r *Registry) scratchPublication(ctx context.Context, tx pgx.Tx) (string, error) {
	name := fmt.Sprintf("pgaudit_cdc_check_%d", r.conn.PgConn().PID())
	createErr, err := r.createScratch(ctx, tx, name)
	if err != nil {
		return "", err
	}
	if err := createErr; err != nil {
		if replication.IsCode(err, pgerrcode.InsufficientPrivilege) {
			return "", fmt.Errorf("creating publication %q: the role needs CREATE on the database (GRANT CREATE ON DATABASE ... TO the role, as `pgaudit-cdc setup --print-sql` prints): %w", r.publication, err)
		}
		return "", fmt.Errorf("creating publication %q: %w", r.publication, err)
	}
	return name, nil
}

// createScratch creates publication name, in tx, with the options the real
// one gets on this server version. createErr is CREATE PUBLICATION's own
// error, for the caller to explain; err is any other.
func (r *Registry) createScratch(ctx context.Context, tx pgx.Tx, name string) (createErr, err error) {
	version, err := replication.ServerVersion(ctx, r.conn)
	if err != nil {
		return nil, err
	}
	_, createErr = tx.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{name}.Sanitize()+" WITH ("+replication.PublicationOptions(version)+")")
	return createErr, nil
}

// boundedTx begins a housekeeping transaction whose locks wait at most 1 s:
// maintenance never holds up the application's writers for long.
func (r *Registry) boundedTx(ctx context.Context) (pgx.Tx, error) {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting transaction: %w", err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '1s'"); err != nil {
		_ = tx.Rollback(ctx)
		return nil, fmt.Errorf("setting lock_timeout: %w", err)
	}
	return tx, nil
}

// housekeepingTx is boundedTx holding the registry lock. When a watch or
// unwatch holds it, it returns a nil transaction: skip the round.
func (r *Registry) housekeepingTx(ctx context.Context) (pgx.Tx, error) {
	tx, err := r.boundedTx(ctx)
	if err != nil {
		return nil, err
	}
	var locked bool
	if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", int64(lockKey)).Scan(&locked); err != nil || !locked {
		_ = tx.Rollback(ctx)
		if err != nil {
			return nil, fmt.Errorf("locking the registry: %w", err)
		}
		return nil, nil
	}
	return tx, nil
}

// lockedTx begins a transaction holding the registry lock, which serialises
// registry changes across CLI calls.
func (r *Registry) lockedTx(ctx context.Context, what string) (pgx.Tx, error) {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting the %s transaction: %w", what, err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
		_ = tx.Rollback(ctx)
		return nil, fmt.Errorf("locking the registry: %w", err)
	}
	return tx, nil
}

// Entry is one row of the registry.
type Entry struct {
	TableOID  uint32
	Table     string // schema.table, quoted where needed
	Schema    string
	Name      string
	Kind      string
	Source    string
	Active    bool
	CreatedAt time.Time
	UpdatedAt time.Time
	Options   Options
	ChangedBy string
	// DroppedAt is set when the watch ended because its table was dropped.
	DroppedAt *time.Time
}

// ErrTableNotFound is wrapped when a table named to a command (watch,
// backfill, verify) does not exist.
var ErrTableNotFound = errors.New("table not found")

type relation struct {
	oid         uint32
	kind        string
	replIdent   string
	persistence string // p permanent, u unlogged, t temporary
	partitioned bool
}

// lookupRelation reads table t's kind, replica identity and persistence;
// ok is false when there is no such table.
func lookupRelation(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, t TableName) (relation, bool, error) {
	var rel relation
	var oid uint32
	err := q.QueryRow(ctx, `SELECT c.oid, c.relkind::text, c.relreplident::text, c.relpersistence::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&oid, &rel.kind, &rel.replIdent, &rel.persistence)
	if errors.Is(err, pgx.ErrNoRows) {
		return relation{}, false, nil
	}
	if err != nil {
		return relation{}, false, fmt.Errorf("looking up table %s: %w", ident.Qualified(t.Schema, t.Name), err)
	}
	rel.oid = oid
	rel.partitioned = rel.kind == "p"
	return rel, true, nil
}

// LookupOID returns the OID of table t, or an error wrapping
// ErrTableNotFound when there is none.
func LookupOID(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, t TableName) (uint32, error) {
	rel, ok, err := lookupRelation(ctx, q, t)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("table %s does not exist: check its name (schema.table, with mixed case quoted as in SQL): %w", ident.Qualified(t.Schema, t.Name), ErrTableNotFound)
	}
	return rel.oid, nil
}

// Options refine a watch. Row filters and column lists are enforced by the
// server (publication row filters and column lists, PostgreSQL 15+), so
// filtered rows and excluded values never leave the database.
type Options struct {
	// RowFilter is a SQL boolean expression on the table's columns.
	RowFilter string
	// Columns, when set, are the only columns sent; ExcludeColumns are left
	// out of all the others. Either makes the table's replica identity its
	// primary key (a column list must cover the replica identity), so old
	// rows then carry the key only.
	Columns        []string
	ExcludeColumns []string
	// OnColumns limits UPDATE events to those changing one of these columns.
	OnColumns []string
}

func (o Options) columnControl() bool { return len(o.Columns) > 0 || len(o.ExcludeColumns) > 0 }

// Watch registers t with kind and source (or updates them in place), adds
// it to the publication and sets REPLICA IDENTITY FULL, creating the
// publication and slot first when missing so that capture starts now. It
// returns the qualified name.
func (r *Registry) Watch(ctx context.Context, t TableName, kind, source string, opts ...Options) (string, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	name := ident.Qualified(t.Schema, t.Name)
	if err := r.checkOptions(ctx, o, kind, source); err != nil {
		return "", err
	}
	migrated, err := r.precheck(ctx, func(tx pgx.Tx, registry bool) error {
		if err := r.convertInDryRun(ctx, tx); err != nil {
			return err
		}
		rel, cols, err := r.checkWatch(ctx, tx, t, o, registry)
		if err != nil {
			return err
		}
		return r.tryMembership(ctx, tx, rel, t, cols, o.RowFilter)
	})
	if err != nil {
		return "", err
	}
	if err := r.prepare(ctx, migrated); err != nil {
		return "", err
	}
	tx, err := r.lockedTx(ctx, "watch")
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	// The checks again, under the registry lock.
	rel, cols, err := r.checkWatch(ctx, tx, t, o, true)
	if err != nil {
		return "", err
	}
	var prevActive bool
	var prevFilter *string
	err = tx.QueryRow(ctx, `SELECT active, row_filter FROM pgaudit_cdc.watches WHERE table_oid = $1`, rel.oid).Scan(&prevActive, &prevFilter)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("reading the watch of %s: %w", name, err)
	}
	if err := r.register(ctx, tx, rel, t, kind, source, o); err != nil {
		return "", err
	}
	if err := r.publishWatched(ctx, tx, rel, t, cols, o.RowFilter, prevActive && deref(prevFilter) == o.RowFilter); err != nil {
		return "", err
	}
	// Its inheritance children, published with it but not watched yet,
	// get watches of their own (migration 0015), in this transaction.
	if _, err := tx.Exec(ctx, `SELECT pgaudit_cdc.adopt_watched_names()`); err != nil {
		return "", fmt.Errorf("watching the tables that inherit from %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("committing the watch of %s: %w", name, err)
	}
	return name, nil
}

// checkOptions refuses what a watch cannot be: its errors are the user's
// to fix.
func (r *Registry) checkOptions(ctx context.Context, o Options, kind, source string) error {
	if len(o.Columns) > 0 && len(o.ExcludeColumns) > 0 {
		return errors.New("use --columns or --exclude-columns, not both")
	}
	if o.columnControl() && len(o.OnColumns) > 0 {
		return errors.New("--on-columns compares the old and new rows, which --columns/--exclude-columns prevent (old rows then carry the key only): use one or the other")
	}
	if kind == "" || source == "" {
		return errors.New("a watch needs a kind and a non-empty source")
	}
	if o.RowFilter != "" || o.columnControl() {
		if v, err := replication.ServerVersion(ctx, r.conn); err != nil {
			return err
		} else if v < 150000 {
			return errors.New("row filters (--where) and column lists (--columns, --exclude-columns) need PostgreSQL 15 or later")
		}
	}
	return nil
}

// register writes the watch's registry row, records a partitioned table's
// partitions, and sets the table's replica identity.
func (r *Registry) register(ctx context.Context, tx pgx.Tx, rel relation, t TableName, kind, source string, o Options) error {
	name := ident.Qualified(t.Schema, t.Name)
	// The registry row first: the DDL event trigger, fired by the ALTER
	// TABLE below, reads it (a column-controlled table of a watched schema
	// must keep its primary key as identity, not get FULL).
	_, err := tx.Exec(ctx, `INSERT INTO pgaudit_cdc.watches AS w
			(table_oid, schema_name, table_name, watched_schema, watched_table, kind, source, active, prior_replica_identity,
			 row_filter, columns, exclude_columns, on_columns, changed_by)
		VALUES ($1, $2, $3, $2, $3, $4, $5, true, $6::"char", $7, $8, $9, $10, current_user)
		ON CONFLICT (table_oid) DO UPDATE SET
			schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
			watched_schema = EXCLUDED.watched_schema, watched_table = EXCLUDED.watched_table, origin = NULL,
			kind = EXCLUDED.kind, source = EXCLUDED.source, active = true, dropped_at = NULL, updated_at = now(),
			row_filter = EXCLUDED.row_filter, columns = EXCLUDED.columns,
			exclude_columns = EXCLUDED.exclude_columns, on_columns = EXCLUDED.on_columns,
			changed_by = current_user,
			prior_replica_identity = CASE WHEN w.active THEN w.prior_replica_identity ELSE EXCLUDED.prior_replica_identity END
		WHERE (w.schema_name, w.table_name, w.watched_schema, w.watched_table, w.origin, w.kind, w.source, w.active,
				w.row_filter, w.columns, w.exclude_columns, w.on_columns)
			IS DISTINCT FROM (EXCLUDED.schema_name, EXCLUDED.table_name, EXCLUDED.watched_schema, EXCLUDED.watched_table, NULL,
				EXCLUDED.kind, EXCLUDED.source, true, EXCLUDED.row_filter, EXCLUDED.columns, EXCLUDED.exclude_columns, EXCLUDED.on_columns)`,
		rel.oid, t.Schema, t.Name, kind, source, rel.replIdent, nullIfEmpty(o.RowFilter), nilIfEmpty(o.Columns), nilIfEmpty(o.ExcludeColumns), nilIfEmpty(o.OnColumns))
	if err != nil {
		return fmt.Errorf("registering the watch of %s: %w", name, err)
	}
	if rel.partitioned {
		// Its partitions are known before the ALTER TABLEs below fire the
		// DDL trigger, which would take them for newly attached ones.
		if _, err := tx.Exec(ctx, `SELECT pgaudit_cdc.follow_partitions('watched', $1)`, rel.oid); err != nil {
			return fmt.Errorf("recording the partitions of %s: %w", name, err)
		}
		if err := auditPartitionTruncates(ctx, tx, name, rel.oid); err != nil {
			return err
		}
	}
	if o.columnControl() {
		// A column list must cover the replica identity: the primary key.
		if rel.replIdent != "d" {
			if err := alterIdentity(ctx, tx, t.Schema, t.Name, "DEFAULT", "setting REPLICA IDENTITY DEFAULT on "+name); err != nil {
				return err
			}
		}
	} else if err := r.setReplicaIdentityFull(ctx, tx, rel, t); err != nil {
		return err
	}
	return nil
}

// publishWatched gives the table the watch's row filter and column list in
// the publication. A schema-wide watch of its schema may have made it a
// plain member: this watch's take precedence. sameFilter says an
// unchanged row filter (which cannot be read back as written) was set by
// the active watch.
func (r *Registry) publishWatched(ctx context.Context, tx pgx.Tx, rel relation, t TableName, cols []string, rowFilter string, sameFilter bool) error {
	cur, err := r.membershipOf(ctx, tx, rel.oid)
	if err != nil {
		return err
	}
	same := cur.member && slices.Equal(cur.columns, cols) && cur.hasFilter == (rowFilter != "") &&
		(rowFilter == "" || sameFilter)
	if cur.member && !same {
		// Replace the table's filter and column list in this transaction:
		// changes committed after it follow the new definition.
		if err := r.dropTable(ctx, tx, t); err != nil {
			return err
		}
	}
	if !same {
		return r.addTable(ctx, tx, t, cols, rowFilter)
	}
	return nil
}

// checkWatch runs the checks that can refuse the watch of t with o, and
// returns the table and its publication column list. registry says whether
// the pgaudit_cdc registry exists (it does not before the first watch of a
// database).
func (r *Registry) checkWatch(ctx context.Context, tx pgx.Tx, t TableName, o Options, registry bool) (relation, []string, error) {
	name := ident.Qualified(t.Schema, t.Name)
	rel, ok, err := lookupRelation(ctx, tx, t)
	if err != nil {
		return relation{}, nil, err
	}
	if !ok {
		return relation{}, nil, fmt.Errorf("table %s does not exist: create it first, or check the name (unquoted names fold to lower case: quote mixed-case names, e.g. '\"MyTable\"'): %w", name, ErrTableNotFound)
	}
	if rel.kind != "r" && rel.kind != "p" {
		return relation{}, nil, fmt.Errorf("%s is not a table (relkind %q): only tables and partitioned tables can be watched", name, rel.kind)
	}
	if rel.persistence != "p" {
		return relation{}, nil, fmt.Errorf("%s is an unlogged or temporary table: its changes are not written to the WAL, so logical replication cannot capture them; make it a regular table (ALTER TABLE %s SET LOGGED) and watch it again", name, pgx.Identifier{t.Schema, t.Name}.Sanitize())
	}
	if !o.columnControl() {
		// PostgreSQL 18's virtual generated columns cannot be published, and
		// under REPLICA IDENTITY FULL the table would then refuse every
		// UPDATE and DELETE: refuse the watch rather than break the writers.
		rows, err := tx.Query(ctx, `SELECT attname FROM pg_attribute
			WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = 'v' ORDER BY attnum`, rel.oid)
		if err != nil {
			return relation{}, nil, fmt.Errorf("reading the columns of %s: %w", name, err)
		}
		virtual, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return relation{}, nil, fmt.Errorf("reading the columns of %s: %w", name, err)
		}
		if len(virtual) > 0 {
			return relation{}, nil, fmt.Errorf("%s has virtual generated columns (%s), which PostgreSQL cannot publish: with REPLICA IDENTITY FULL the table would refuse every UPDATE and DELETE; make them STORED (drop and add them again with STORED), or watch with --exclude-columns naming them", name, strings.Join(virtual, ", "))
		}
	}
	if rel.kind == "p" && o.columnControl() {
		return relation{}, nil, fmt.Errorf("%s is partitioned: column control needs each partition's primary key as its replica identity; watch the partitions one by one, or drop --columns/--exclude-columns", name)
	}
	legacy, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil {
		return relation{}, nil, err
	}
	if err := r.legacyConflict(legacy, t, o); err != nil {
		return relation{}, nil, err
	}
	if err := r.partitionConflict(ctx, tx, rel, name, o, registry); err != nil {
		return relation{}, nil, err
	}
	cols, err := r.columnList(ctx, tx, rel, t, o)
	if err != nil {
		return relation{}, nil, err
	}
	return rel, cols, nil
}

// tryMembership adds t to the publication in precheck's transaction (rolled
// back) as the watch will, or to a scratch publication before the real one
// exists, so that PostgreSQL checks the ownership of the table, the row
// filter and the column list before anything is created.
func (r *Registry) tryMembership(ctx context.Context, tx pgx.Tx, rel relation, t TableName, cols []string, rowFilter string) error {
	exists, err := r.publicationExists(ctx, tx)
	if err != nil {
		return err
	}
	if !exists {
		pub, err := r.scratchPublication(ctx, tx)
		if err != nil {
			return err
		}
		return r.addTableTo(ctx, tx, pub, t, cols, rowFilter)
	}
	cur, err := r.membershipOf(ctx, tx, rel.oid)
	if err != nil {
		return err
	}
	if cur.member {
		if rowFilter == "" && cols == nil {
			return nil // nothing PostgreSQL would check
		}
		if err := r.dropTable(ctx, tx, t); err != nil {
			return err
		}
	}
	return r.addTable(ctx, tx, t, cols, rowFilter)
}

// columnList returns the publication column list for o (nil: all columns),
// checking that every named column exists and adding the primary key.
func (r *Registry) columnList(ctx context.Context, tx pgx.Tx, rel relation, t TableName, o Options) ([]string, error) {
	name := ident.Qualified(t.Schema, t.Name)
	rows, err := tx.Query(ctx, `SELECT a.attname, coalesce(i.indisprimary, false), a.attgenerated <> ''
		FROM pg_attribute a
		LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY(i.indkey)
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, rel.oid)
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", name, err)
	}
	type column struct {
		name           string
		key, generated bool
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (column, error) {
		var c column
		err := row.Scan(&c.name, &c.key, &c.generated)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", name, err)
	}
	has := func(n string) bool { return slices.ContainsFunc(all, func(c column) bool { return c.name == n }) }
	for _, list := range [][]string{o.Columns, o.ExcludeColumns, o.OnColumns} {
		for _, c := range list {
			if !has(c) {
				return nil, fmt.Errorf("column %q does not exist in %s", c, name)
			}
		}
	}
	if !o.columnControl() {
		return nil, nil
	}
	var key []string
	for _, c := range all {
		if c.key {
			key = append(key, c.name)
		}
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%s has no primary key: --columns/--exclude-columns need one (a publication column list must include the replica identity)", name)
	}
	var cols []string
	for _, c := range all {
		switch {
		case c.generated:
		case c.key:
			if slices.Contains(o.ExcludeColumns, c.name) {
				return nil, fmt.Errorf("column %q is part of the primary key of %s and cannot be excluded", c.name, name)
			}
			cols = append(cols, c.name)
		case len(o.Columns) > 0 && slices.Contains(o.Columns, c.name):
			cols = append(cols, c.name)
		case len(o.ExcludeColumns) > 0 && !slices.Contains(o.ExcludeColumns, c.name):
			cols = append(cols, c.name)
		}
	}
	return cols, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// setReplicaIdentityFull makes UPDATE and DELETE carry the whole old row. For
// a partitioned table every partition needs it too (the setting is not
// inherited); `run` repeats this for partitions created later.
func (r *Registry) setReplicaIdentityFull(ctx context.Context, tx pgx.Tx, rel relation, t TableName) error {
	if rel.replIdent != "f" {
		if err := alterIdentity(ctx, tx, t.Schema, t.Name, "FULL", "setting REPLICA IDENTITY FULL on "+ident.Qualified(t.Schema, t.Name)); err != nil {
			return err
		}
	}
	if rel.partitioned {
		_, err := fixPartitions(ctx, tx, rel.oid)
		return err
	}
	return nil
}

// fixPartitions sets REPLICA IDENTITY FULL on the partitions of root that
// lack it, except those with virtual generated columns (see virtual.go).
func fixPartitions(ctx context.Context, tx pgx.Tx, root uint32) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT n.nspname, c.relname
		FROM pg_partition_tree($1::oid::regclass) pt
		JOIN pg_class c ON c.oid = pt.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE pt.relid <> $1::oid::regclass AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
			AND NOT `+hasVirtualColumns, root)
	if err != nil {
		return nil, fmt.Errorf("listing partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TableName, error) {
		var t TableName
		err := row.Scan(&t.Schema, &t.Name)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing partitions: %w", err)
	}
	var fixed []string
	for _, p := range names {
		if err := alterIdentity(ctx, tx, p.Schema, p.Name, "FULL", "setting REPLICA IDENTITY FULL on partition "+ident.Qualified(p.Schema, p.Name)); err != nil {
			return fixed, err
		}
		fixed = append(fixed, ident.Qualified(p.Schema, p.Name))
	}
	return fixed, nil
}

// FixReplicaIdentity gives every table a watch covers the REPLICA IDENTITY
// FULL it needs: partitions created after their partitioned table was
// watched, tables created in a watched schema, and watched tables whose
// identity a migration weakened (ALTER TABLE ... REPLICA IDENTITY DEFAULT).
// Tables with a column list keep their primary key as identity. It returns
// the tables it changed. First it adds the tables of watched schemas that are
// not yet members of the publication (created where no event trigger is
// installed). The agent calls it periodically, and at once when
// the stream shows a weakened identity.
//
// ALTER TABLE needs an ACCESS EXCLUSIVE lock; a short lock_timeout keeps a
// long application transaction from stalling the caller: it tries again
// later.
//
// Tables with virtual generated columns (PostgreSQL 18) never get FULL, which
// would make them refuse every UPDATE and DELETE: they keep, or get back,
// REPLICA IDENTITY DEFAULT (see virtual.go). What it did to them, and those
// it cannot help, come back as a *VirtualColumnsNotice joined to the error:
// to be logged, not a failure.
func (r *Registry) FixReplicaIdentity(ctx context.Context) ([]string, error) {
	notice, virtualErr := r.relieveVirtualColumns(ctx)
	if notice == nil {
		notice = &VirtualColumnsNotice{}
	}
	// Tables that joined a watched schema without the event trigger join
	// the publication first (with FULL), in a transaction of their own.
	_, identity, virtual, syncErr := r.syncSchemaMembership(ctx)
	for _, name := range virtual {
		notice.add(name, fmt.Sprintf("%s joined the publication for its watched schema with REPLICA IDENTITY DEFAULT (its primary key), not FULL: it has virtual generated columns, which PostgreSQL cannot publish, and with FULL it would refuse every UPDATE and DELETE; its UPDATE/DELETE events carry the key only as old row (old_is_key_only); for whole old rows make the columns STORED (drop and add them again with STORED)", name))
	}
	fixed, err := r.fixReplicaIdentity(ctx)
	var noticeErr error
	if len(notice.Tables) > 0 {
		noticeErr = notice
	}
	return append(identity, fixed...), errors.Join(virtualErr, syncErr, err, noticeErr)
}

func (r *Registry) fixReplicaIdentity(ctx context.Context) ([]string, error) {
	tx, err := r.boundedTx(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	rows, err := tx.Query(ctx, `SELECT n.nspname, c.relname FROM pgaudit_cdc.watches w
		JOIN pg_class c ON c.oid = w.table_oid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.active AND w.columns IS NULL AND w.exclude_columns IS NULL
			AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f' AND c.relpersistence = 'p'
			AND NOT `+hasVirtualColumns)
	if err != nil {
		return nil, fmt.Errorf("listing watched tables: %w", err)
	}
	weakened, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TableName, error) {
		var t TableName
		err := row.Scan(&t.Schema, &t.Name)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing watched tables: %w", err)
	}
	var fixed []string
	for _, t := range weakened {
		if err := alterIdentity(ctx, tx, t.Schema, t.Name, "FULL", "restoring REPLICA IDENTITY FULL on "+ident.Qualified(t.Schema, t.Name)); err != nil {
			return nil, err
		}
		fixed = append(fixed, ident.Qualified(t.Schema, t.Name))
	}
	rows, err = tx.Query(ctx, `SELECT w.table_oid FROM pgaudit_cdc.watches w
		JOIN pg_class c ON c.oid = w.table_oid WHERE w.active AND c.relkind = 'p'`)
	if err != nil {
		return nil, fmt.Errorf("listing watched partitioned tables: %w", err)
	}
	roots, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		return nil, fmt.Errorf("listing watched partitioned tables: %w", err)
	}
	for _, root := range roots {
		names, err := fixPartitions(ctx, tx, root)
		if err != nil {
			return nil, err
		}
		fixed = append(fixed, names...)
	}
	rows, err = tx.Query(ctx, `SELECT schema_name FROM pgaudit_cdc.schema_watches WHERE active`)
	if err != nil {
		return nil, fmt.Errorf("listing watched schemas: %w", err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing watched schemas: %w", err)
	}
	for _, sc := range schemas {
		names, err := fixSchemaTables(ctx, tx, sc)
		if err != nil {
			return nil, err
		}
		fixed = append(fixed, names...)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing replica identity changes: %w", err)
	}
	return fixed, nil
}

// Unwatch stops auditing t. It reports whether an active watch was removed;
// unwatching an unwatched table is not an error, and it works after the
// table was dropped. The registry keeps the row as a tombstone. A table of a
// watched schema stays audited by the schema watch: it stays in the
// publication without row filter or column list, with REPLICA IDENTITY FULL
// (DEFAULT, its primary key, when it has virtual generated columns, see
// virtual.go; without one it stays published too, and PostgreSQL refuses its
// UPDATE and DELETE).
func (r *Registry) Unwatch(ctx context.Context, t TableName) (bool, error) {
	name := ident.Qualified(t.Schema, t.Name)
	return r.unwatch(ctx, name, func(tx pgx.Tx) (bool, error) { return r.unwatchTable(ctx, tx, t, name) })
}

// unwatch runs remove, which ends a watch and reports whether an active one
// was removed, in a registry transaction: the schema migrated first, the
// registry lock held, committed at the end. what names the watch in errors.
func (r *Registry) unwatch(ctx context.Context, what string, remove func(tx pgx.Tx) (bool, error)) (bool, error) {
	if _, err := migrations.Apply(ctx, r.conn); err != nil {
		return false, err
	}
	tx, err := r.lockedTx(ctx, "unwatch")
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	removed, err := remove(tx)
	if err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing the unwatch of %s: %w", what, err)
	}
	return removed, nil
}

// unwatchTable is Unwatch's part in the registry transaction.
func (r *Registry) unwatchTable(ctx context.Context, tx pgx.Tx, t TableName, name string) (bool, error) {
	rel, exists, err := lookupRelation(ctx, tx, t)
	if err != nil {
		return false, err
	}
	if !exists {
		tag, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.watches SET active = false, updated_at = now(), changed_by = current_user
			WHERE schema_name = $1 AND table_name = $2 AND active`, t.Schema, t.Name)
		if err != nil {
			return false, fmt.Errorf("unregistering %s: %w", name, err)
		}
		return tag.RowsAffected() > 0, nil
	}
	// A table of a watched schema stays in the publication for the
	// schema-wide watch, as a plain member with REPLICA IDENTITY FULL:
	// the schema watch takes over from the per-table one.
	covered, err := schemaWatched(ctx, tx, t.Schema)
	if err != nil {
		return false, err
	}
	if err := r.leavePublication(ctx, tx, t, rel, covered); err != nil {
		return false, err
	}
	var prior *string
	err = tx.QueryRow(ctx, `UPDATE pgaudit_cdc.watches SET active = false, updated_at = now(), changed_by = current_user
		WHERE table_oid = $1 AND active RETURNING prior_replica_identity::text`, rel.oid).Scan(&prior)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("unregistering %s: %w", name, err)
	}
	return true, r.restoreIdentity(ctx, tx, t, name, rel, covered, prior)
}

// leavePublication takes an unwatched table out of the publication, or,
// when its schema is watched (covered), leaves it there as the schema
// watch's plain member.
func (r *Registry) leavePublication(ctx context.Context, tx pgx.Tx, t TableName, rel relation, covered bool) error {
	legacy, err := replication.SchemaMembers(ctx, tx, r.publication)
	if err != nil {
		return err
	}
	throughSchema := slices.Contains(legacy, t.Schema) // FOR TABLES IN SCHEMA, from an earlier version
	cur, err := r.membershipOf(ctx, tx, rel.oid)
	if err != nil {
		return err
	}
	switch {
	case covered && !throughSchema:
		if cur.member && !cur.plain() {
			if err := r.dropTable(ctx, tx, t); err != nil {
				return err
			}
			cur.member = false
		}
		if !cur.member && (rel.kind == "r" || rel.kind == "p") && rel.persistence == "p" {
			return r.addTable(ctx, tx, t, nil, "")
		}
	case cur.member:
		return r.dropTable(ctx, tx, t)
	}
	return nil
}

// restoreIdentity sets the replica identity an unwatched table keeps: the
// schema watch's when its schema is watched (covered), else the one it had
// before the watch (prior), when that can be restored without knowing an
// index name.
func (r *Registry) restoreIdentity(ctx context.Context, tx pgx.Tx, t TableName, name string, rel relation, covered bool, prior *string) error {
	if !covered {
		if prior == nil || (*prior != "d" && *prior != "n") || rel.replIdent != "f" {
			return nil
		}
		identity := map[string]string{"d": "DEFAULT", "n": "NOTHING"}[*prior]
		return alterIdentity(ctx, tx, t.Schema, t.Name, identity, "restoring the replica identity of "+name)
	}
	// A table with virtual generated columns (PostgreSQL 18) goes back to
	// the schema watch with its primary key as identity, not FULL, which
	// would make it refuse every UPDATE and DELETE; without a primary key
	// (or an identity index) it stays in the publication all the same,
	// never left out unaudited: PostgreSQL then refuses its UPDATE and
	// DELETE, which is loud.
	virtual, hasKey, err := KeepFromFull(ctx, tx, rel.oid)
	if err != nil {
		return err
	}
	if !virtual {
		// A column-controlled watch left the primary key as the identity:
		// the schema watch sends whole old rows.
		return r.setReplicaIdentityFull(ctx, tx, rel, t)
	}
	if hasKey && rel.replIdent != "d" && rel.replIdent != "i" {
		return alterIdentity(ctx, tx, t.Schema, t.Name, "DEFAULT", "setting REPLICA IDENTITY DEFAULT on "+name)
	}
	return nil
}

// List returns the registry, active watches only unless all is set.
func (r *Registry) List(ctx context.Context, all bool) ([]Entry, error) {
	if _, err := migrations.Apply(ctx, r.conn); err != nil {
		return nil, err
	}
	return Load(ctx, r.conn, all)
}

// Load reads the registry without migrating (the agent has migrated).
func Load(ctx context.Context, conn *pgx.Conn, all bool) ([]Entry, error) {
	// The names come from the catalog while the table exists: a rename is
	// shown at once, before the registry row follows it.
	return readRows(ctx, conn, "the watch registry", func(row pgx.CollectableRow) (Entry, error) {
		var e Entry
		err := row.Scan(&e.TableOID, &e.Schema, &e.Name, &e.Kind, &e.Source, &e.Active, &e.CreatedAt, &e.UpdatedAt,
			&e.Options.RowFilter, &e.Options.Columns, &e.Options.ExcludeColumns, &e.Options.OnColumns, &e.ChangedBy, &e.DroppedAt)
		e.Table = ident.Qualified(e.Schema, e.Name)
		return e, err
	}, `SELECT w.table_oid, coalesce(n.nspname, w.schema_name), coalesce(c.relname, w.table_name),
			w.kind, w.source, w.active, w.created_at, w.updated_at,
			coalesce(w.row_filter, ''), coalesce(w.columns, '{}'), coalesce(w.exclude_columns, '{}'), coalesce(w.on_columns, '{}'), w.changed_by,
			w.dropped_at
		FROM pgaudit_cdc.watches w LEFT JOIN pg_class c ON c.oid = w.table_oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.active OR $1 ORDER BY 2, 3`, all)
}

// readRows runs a query and collects its rows with scan; what names the
// rows in errors.
func readRows[T any](ctx context.Context, conn *pgx.Conn, what string, scan pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return out, nil
}

// Map turns entries into the decoder's watch map, tombstones included.
func Map(entries []Entry) map[uint32]decode.Watch {
	m := make(map[uint32]decode.Watch, len(entries))
	for _, e := range entries {
		m[e.TableOID] = decode.Watch{Kind: e.Kind, Source: e.Source, Active: e.Active, OnColumns: nilIfEmpty(e.Options.OnColumns),
			KeyIdentity: len(e.Options.Columns) > 0 || len(e.Options.ExcludeColumns) > 0}
	}
	return m
}

// Unlogged is an UNLOGGED table under a watch: a partition of a watched
// partitioned table, or an inheritance child of a watched table.
type Unlogged struct {
	Table TableName
	Under string // the watched table, as events name it
}

// DeclareUnlogged lists the UNLOGGED tables under watches, whose changes
// are not in the WAL, and declares the hole: a partition's row of
// pgaudit_cdc.partitions turns 'unlogged', an UNLOGGED event (migration
// 0014). The event trigger sets such tables LOGGED in their DDL's
// transaction where a superuser installed it; then there are none.
func (r *Registry) DeclareUnlogged(ctx context.Context) ([]Unlogged, error) {
	rows, err := r.conn.Query(ctx, `SELECT schema_name, table_name, root_name FROM pgaudit_cdc.declare_unlogged()`)
	if err != nil {
		return nil, fmt.Errorf("looking for unlogged tables under watched tables: %w", err)
	}
	found, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Unlogged, error) {
		var u Unlogged
		err := row.Scan(&u.Table.Schema, &u.Table.Name, &u.Under)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("looking for unlogged tables under watched tables: %w", err)
	}
	return found, nil
}

// auditPartitionTruncates gives the partitions of root, being watched, the
// trigger that audits a TRUNCATE of one by itself, in the watch's
// transaction (migration 0019). A partition that cannot have one refuses
// the watch: it would be a hole from its first moment.
func auditPartitionTruncates(ctx context.Context, tx pgx.Tx, name string, root uint32) error {
	rows, err := tx.Query(ctx, `SELECT u.name FROM pgaudit_cdc.truncates_unaudited() u,
		LATERAL pgaudit_cdc.restore_truncate_trigger(u.table_oid) r WHERE u.root_oid = $1 AND r = 'failed'`, root)
	var failed []string
	if err == nil {
		failed, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return fmt.Errorf("auditing TRUNCATE of the partitions of %s: %w", name, err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("cannot watch %s: the trigger that audits a TRUNCATE of its partition(s) %s by itself cannot be created (PostgreSQL publishes a partition's changes as its partitioned table's, but not its own TRUNCATE); GRANT the partitions' owner role to the owner of schema pgaudit_cdc, or watch as a superuser",
			name, strings.Join(failed, ", "))
	}
	return nil
}

// TruncateHole is a table under a watched partitioned table whose TRUNCATE
// was not audited for a while, or is not: State says why (dropped,
// disabled: by its owner; failed: it cannot be given its trigger; busy:
// its lock was not to be had, the next round tries again).
type TruncateHole struct {
	Table, Under, State string
}

// KeepTruncatesAudited declares, in a transaction of its own, the tables
// under watched partitioned tables whose TRUNCATE trigger was taken away
// (an UNAUDITED event each, migration 0019), then puts each trigger back in
// a statement of its own that waits at most two seconds for the table's
// lock: a writer holding it cannot take the declaration back with it. The
// event triggers put them back in the DDL's own transaction where a
// superuser installed them; then there are none.
func (r *Registry) KeepTruncatesAudited(ctx context.Context) ([]TruncateHole, error) {
	rows, err := r.conn.Query(ctx, `SELECT table_name, root_name, state FROM pgaudit_cdc.declare_unaudited_truncates(NULL, NULL)`)
	if err != nil {
		return nil, fmt.Errorf("declaring partitions whose TRUNCATE went unaudited: %w", err)
	}
	holes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[TruncateHole])
	if err != nil {
		return nil, fmt.Errorf("declaring partitions whose TRUNCATE went unaudited: %w", err)
	}
	type table struct {
		OID         uint32
		Name, Under string
	}
	rows, err = r.conn.Query(ctx, `SELECT table_oid, name, root_name FROM pgaudit_cdc.truncates_unaudited()`)
	if err != nil {
		return holes, fmt.Errorf("listing partitions without their TRUNCATE trigger: %w", err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowToStructByPos[table])
	if err != nil {
		return holes, fmt.Errorf("listing partitions without their TRUNCATE trigger: %w", err)
	}
	var errs []error
	for _, t := range missing {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		state, err := r.restoreTruncateTrigger(ctx, t.OID)
		if err != nil {
			// The next table is another table: one error does not keep
			// its trigger from it.
			errs = append(errs, fmt.Errorf("putting back the TRUNCATE trigger of %s: %w", t.Name, err))
			continue
		}
		if state == "failed" || state == "busy" {
			holes = append(holes, TruncateHole{Table: t.Name, Under: t.Under, State: state})
		}
	}
	return holes, errors.Join(errs...)
}

// restoreTruncateTrigger runs pgaudit_cdc.restore_truncate_trigger for one
// table, waiting at most two seconds for its locks.
func (r *Registry) restoreTruncateTrigger(ctx context.Context, oid uint32) (string, error) {
	var state string
	err := r.underLockTimeout(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT pgaudit_cdc.restore_truncate_trigger($1)`, oid).Scan(&state)
	})
	return state, err
}

// SetLogged sets t LOGGED, waiting at most two seconds for its lock: the
// rewrite runs in a transaction of its own, under ctx. A partition's row
// turns 'logged' with it.
func (r *Registry) SetLogged(ctx context.Context, t TableName) error {
	return r.underLockTimeout(ctx, func(tx pgx.Tx) error {
		quoted := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		if _, err := tx.Exec(ctx, `ALTER TABLE `+quoted+` SET LOGGED`); err != nil {
			return err
		}
		// The hole is closed: the next time it turns unlogged is another
		// one, with an UNLOGGED event of its own.
		_, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.partitions SET how = 'logged' WHERE table_oid = $1::regclass AND how = 'unlogged'`, quoted)
		return err
	})
}

// underLockTimeout runs fn in a transaction of its own that waits at most
// two seconds for any lock (the housekeeping's repairs: a writer holding a
// table must not hold up the round), and commits it when fn succeeds.
func (r *Registry) underLockTimeout(ctx context.Context, fn func(pgx.Tx) error) error {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// FollowLifecycle ends the watches of tables that were dropped (a DROP
// event), renames the watches of renamed tables (a REWATCH event showing the
// old name), watches a table that took the name a watch was made for (a
// WATCH event), and follows the partitions of watched partitioned tables
// (ATTACH and DETACH events; a detached one gets a watch of its own). The
// event triggers do all of it in the DDL's transaction where a superuser
// installed them; the agent calls this periodically for the rest. changed
// has a line per change but the drops.
func (r *Registry) FollowLifecycle(ctx context.Context) (dropped, changed []string, err error) {
	rows, err := r.conn.Query(ctx, `SELECT pgaudit_cdc.mark_dropped_tables()`)
	if err != nil {
		return nil, nil, fmt.Errorf("recording dropped tables: %w", err)
	}
	if dropped, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, nil, fmt.Errorf("recording dropped tables: %w", err)
	}
	rows, err = r.conn.Query(ctx, `SELECT pgaudit_cdc.sync_watch_names()`)
	if err != nil {
		return dropped, nil, fmt.Errorf("following renamed tables: %w", err)
	}
	if changed, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return dropped, nil, fmt.Errorf("following renamed tables: %w", err)
	}
	return dropped, changed, nil
}
