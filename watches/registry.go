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
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// lockKey serialises registry changes across CLI calls.
const lockKey = 0x7067617564697401

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
}

// ErrTableNotFound is wrapped when the table to watch does not exist.
var ErrTableNotFound = errors.New("table not found")

type relation struct {
	oid         uint32
	kind        string
	replIdent   string
	partitioned bool
}

func (r *Registry) lookup(ctx context.Context, q pgx.Tx, t TableName) (relation, bool, error) {
	var rel relation
	var oid uint32
	err := q.QueryRow(ctx, `SELECT c.oid, c.relkind::text, c.relreplident::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&oid, &rel.kind, &rel.replIdent)
	if errors.Is(err, pgx.ErrNoRows) {
		return relation{}, false, nil
	}
	if err != nil {
		return relation{}, false, fmt.Errorf("looking up table %s: %w", decode.QualifiedName(t.Schema, t.Name), err)
	}
	rel.oid = oid
	rel.partitioned = rel.kind == "p"
	return rel, true, nil
}

// Watch registers t with kind and source (or updates them in place), adds
// it to the publication and sets REPLICA IDENTITY FULL, creating the
// publication and slot first when missing so that capture starts now. It
// returns the qualified name.
func (r *Registry) Watch(ctx context.Context, t TableName, kind, source string) (string, error) {
	name := decode.QualifiedName(t.Schema, t.Name)
	if kind == "" || source == "" {
		return "", errors.New("a watch needs a kind and a non-empty source")
	}
	if _, err := migrations.Apply(ctx, r.conn); err != nil {
		return "", err
	}
	// Slot creation waits for writing transactions, so it happens before ours.
	if err := replication.EnsurePublication(ctx, r.conn, r.publication); err != nil {
		return "", err
	}
	if err := replication.EnsureSlot(ctx, r.conn, r.slot); err != nil {
		return "", err
	}
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("starting the watch transaction: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
		return "", fmt.Errorf("locking the registry: %w", err)
	}
	rel, ok, err := r.lookup(ctx, tx, t)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("table %s does not exist: create it first, or check the name (unquoted names fold to lower case: quote mixed-case names, e.g. '\"MyTable\"'): %w", name, ErrTableNotFound)
	}
	if rel.kind != "r" && rel.kind != "p" {
		return "", fmt.Errorf("%s is not a table (relkind %q): only tables and partitioned tables can be watched", name, rel.kind)
	}
	if err := r.setReplicaIdentityFull(ctx, tx, rel, t); err != nil {
		return "", err
	}
	var member bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = $2)`, r.publication, rel.oid).Scan(&member); err != nil {
		return "", fmt.Errorf("checking publication %q: %w", r.publication, err)
	}
	if !member {
		sql := "ALTER PUBLICATION " + pgx.Identifier{r.publication}.Sanitize() + " ADD TABLE " + pgx.Identifier{t.Schema, t.Name}.Sanitize()
		if _, err := tx.Exec(ctx, sql); err != nil {
			return "", fmt.Errorf("adding %s to publication %q (the role must own the table): %w", name, r.publication, err)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO pgaudit_cdc.watches AS w
			(table_oid, schema_name, table_name, kind, source, active, prior_replica_identity)
		VALUES ($1, $2, $3, $4, $5, true, $6::"char")
		ON CONFLICT (table_oid) DO UPDATE SET
			schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
			kind = EXCLUDED.kind, source = EXCLUDED.source, active = true, updated_at = now(),
			prior_replica_identity = CASE WHEN w.active THEN w.prior_replica_identity ELSE EXCLUDED.prior_replica_identity END
		WHERE (w.schema_name, w.table_name, w.kind, w.source, w.active)
			IS DISTINCT FROM (EXCLUDED.schema_name, EXCLUDED.table_name, EXCLUDED.kind, EXCLUDED.source, true)`,
		rel.oid, t.Schema, t.Name, kind, source, rel.replIdent)
	if err != nil {
		return "", fmt.Errorf("registering the watch of %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("committing the watch of %s: %w", name, err)
	}
	return name, nil
}

// setReplicaIdentityFull makes UPDATE and DELETE carry the whole old row. For
// a partitioned table every partition needs it too (the setting is not
// inherited); `run` repeats this for partitions created later.
func (r *Registry) setReplicaIdentityFull(ctx context.Context, tx pgx.Tx, rel relation, t TableName) error {
	if rel.replIdent != "f" {
		sql := "ALTER TABLE " + pgx.Identifier{t.Schema, t.Name}.Sanitize() + " REPLICA IDENTITY FULL"
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("setting REPLICA IDENTITY FULL on %s (the role must own the table): %w", decode.QualifiedName(t.Schema, t.Name), err)
		}
	}
	if rel.partitioned {
		return fixPartitions(ctx, tx, rel.oid)
	}
	return nil
}

// fixPartitions sets REPLICA IDENTITY FULL on the partitions of root that
// lack it.
func fixPartitions(ctx context.Context, tx pgx.Tx, root uint32) error {
	rows, err := tx.Query(ctx, `SELECT n.nspname, c.relname
		FROM pg_partition_tree($1::oid::regclass) pt
		JOIN pg_class c ON c.oid = pt.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE pt.relid <> $1::oid::regclass AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'`, root)
	if err != nil {
		return fmt.Errorf("listing partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TableName, error) {
		var t TableName
		err := row.Scan(&t.Schema, &t.Name)
		return t, err
	})
	if err != nil {
		return fmt.Errorf("listing partitions: %w", err)
	}
	for _, p := range names {
		if _, err := tx.Exec(ctx, "ALTER TABLE "+pgx.Identifier{p.Schema, p.Name}.Sanitize()+" REPLICA IDENTITY FULL"); err != nil {
			return fmt.Errorf("setting REPLICA IDENTITY FULL on partition %s: %w", decode.QualifiedName(p.Schema, p.Name), err)
		}
	}
	return nil
}

// FixPartitions gives partitions created after their partitioned table was
// watched the REPLICA IDENTITY FULL they need. The agent calls it
// periodically.
func (r *Registry) FixPartitions(ctx context.Context) error {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("starting transaction: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	rows, err := tx.Query(ctx, `SELECT w.table_oid FROM pgaudit_cdc.watches w
		JOIN pg_class c ON c.oid = w.table_oid WHERE w.active AND c.relkind = 'p'`)
	if err != nil {
		return fmt.Errorf("listing watched partitioned tables: %w", err)
	}
	roots, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		return fmt.Errorf("listing watched partitioned tables: %w", err)
	}
	for _, root := range roots {
		if err := fixPartitions(ctx, tx, root); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// Unwatch stops auditing t. It reports whether an active watch was removed;
// unwatching an unwatched table is not an error, and it works after the
// table was dropped. The registry keeps the row as a tombstone.
func (r *Registry) Unwatch(ctx context.Context, t TableName) (bool, error) {
	if _, err := migrations.Apply(ctx, r.conn); err != nil {
		return false, err
	}
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("starting the unwatch transaction: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
		return false, fmt.Errorf("locking the registry: %w", err)
	}
	name := decode.QualifiedName(t.Schema, t.Name)
	rel, exists, err := r.lookup(ctx, tx, t)
	if err != nil {
		return false, err
	}
	var removed int64
	if exists {
		var member bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
			JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = $2)`, r.publication, rel.oid).Scan(&member); err != nil {
			return false, fmt.Errorf("checking publication %q: %w", r.publication, err)
		}
		if member {
			sql := "ALTER PUBLICATION " + pgx.Identifier{r.publication}.Sanitize() + " DROP TABLE " + pgx.Identifier{t.Schema, t.Name}.Sanitize()
			if _, err := tx.Exec(ctx, sql); err != nil {
				return false, fmt.Errorf("removing %s from publication %q: %w", name, r.publication, err)
			}
		}
		var prior *string
		err := tx.QueryRow(ctx, `UPDATE pgaudit_cdc.watches SET active = false, updated_at = now()
			WHERE table_oid = $1 AND active RETURNING prior_replica_identity::text`, rel.oid).Scan(&prior)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return false, fmt.Errorf("unregistering %s: %w", name, err)
		default:
			removed = 1
			// Give the table back the replica identity it had, when that
			// can be restored without knowing an index name.
			if prior != nil && (*prior == "d" || *prior == "n") && rel.replIdent == "f" {
				ident := map[string]string{"d": "DEFAULT", "n": "NOTHING"}[*prior]
				if _, err := tx.Exec(ctx, "ALTER TABLE "+pgx.Identifier{t.Schema, t.Name}.Sanitize()+" REPLICA IDENTITY "+ident); err != nil {
					return false, fmt.Errorf("restoring the replica identity of %s: %w", name, err)
				}
			}
		}
	} else {
		tag, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.watches SET active = false, updated_at = now()
			WHERE schema_name = $1 AND table_name = $2 AND active`, t.Schema, t.Name)
		if err != nil {
			return false, fmt.Errorf("unregistering %s: %w", name, err)
		}
		removed = tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing the unwatch of %s: %w", name, err)
	}
	return removed > 0, nil
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
	rows, err := conn.Query(ctx, `SELECT table_oid, schema_name, table_name, kind, source, active, created_at, updated_at
		FROM pgaudit_cdc.watches WHERE active OR $1 ORDER BY schema_name, table_name`, all)
	if err != nil {
		return nil, fmt.Errorf("reading the watch registry: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Entry, error) {
		var e Entry
		err := row.Scan(&e.TableOID, &e.Schema, &e.Name, &e.Kind, &e.Source, &e.Active, &e.CreatedAt, &e.UpdatedAt)
		e.Table = decode.QualifiedName(e.Schema, e.Name)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the watch registry: %w", err)
	}
	return entries, nil
}

// Map turns entries into the decoder's watch map, tombstones included.
func Map(entries []Entry) map[uint32]decode.Watch {
	m := make(map[uint32]decode.Watch, len(entries))
	for _, e := range entries {
		m[e.TableOID] = decode.Watch{Kind: e.Kind, Source: e.Source, Active: e.Active}
	}
	return m
}
