package watches

// PostgreSQL 18's virtual generated columns cannot be published, and a
// published table whose replica identity holds an unpublished generated
// column refuses every UPDATE and DELETE (SQLSTATE 42P10, "Replica identity
// must not contain unpublished generated columns"). REPLICA IDENTITY FULL
// holds every column, so a table with virtual generated columns never gets
// FULL from pgaudit-cdc: the writers come first. A per-table `watch` refuses
// such a table unless --exclude-columns names the columns, and `watch
// --schema` refuses a schema holding one that is not watched by itself. A
// table that gets them later (CREATE TABLE or SET SCHEMA into a watched
// schema, ADD COLUMN ... VIRTUAL on a watched table) keeps, or gets back,
// REPLICA IDENTITY DEFAULT, its primary key: its UPDATE and DELETE events
// then carry the key only as old row (flagged old_is_key_only). The DDL event
// trigger (migration 0010) does that in the DDL's transaction and warns;
// housekeeping (relieveVirtualColumns) does it where the trigger is missing.
// Without a primary key (or REPLICA IDENTITY USING INDEX) no identity lets
// the table accept UPDATE and DELETE while published, and leaving it out of
// the publication would stop auditing it silently. So the event trigger
// refuses a DDL that would leave a table of a watched schema like that (the
// DDL fails, SQLSTATE 55000, naming the fixes); where the trigger is missing
// housekeeping still publishes such a table with its schema (never removes
// it): the trail stays complete and PostgreSQL refuses its UPDATE and
// DELETE, which is loud, and the notice names the fixes. A table watched by
// itself is named with the fix.

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// hasVirtualColumns is an SQL condition: the pg_class row c has virtual
// generated columns (attgenerated 'v' exists on PostgreSQL 18 only; the
// column attgenerated on 12 and later).
const hasVirtualColumns = `EXISTS (SELECT 1 FROM pg_attribute va WHERE va.attrelid = c.oid AND va.attnum > 0
	AND NOT va.attisdropped AND va.attgenerated = 'v')`

// usableWithVirtualColumns is an SQL condition: the pg_class row c, which
// has virtual generated columns, has a replica identity that lets it accept
// UPDATE and DELETE while published: its primary key (DEFAULT) or an index
// (an index cannot hold a virtual generated column).
const usableWithVirtualColumns = `(c.relreplident = 'i' OR (c.relreplident = 'd'
	AND EXISTS (SELECT 1 FROM pg_index pk WHERE pk.indrelid = c.oid AND pk.indisprimary)))`

// VirtualColumnsNotice is returned by FixReplicaIdentity, joined with any
// error, when it kept tables with virtual generated columns from REPLICA
// IDENTITY FULL: what it did and the fix, one sentence per table, for the
// log. It is not a failure: the rest of the round was done.
type VirtualColumnsNotice struct {
	Tables    []string
	Sentences []string
}

func (n *VirtualColumnsNotice) Error() string { return strings.Join(n.Sentences, "; ") }

func (n *VirtualColumnsNotice) add(table, sentence string) {
	n.Tables = append(n.Tables, table)
	n.Sentences = append(n.Sentences, sentence)
}

// told remembers the tables whose lasting condition (refusing UPDATE and
// DELETE for want of a primary key) a
// notice named already, so that housekeeping names each once per process
// rather than every round. Changes made are always named.
var told sync.Map // publication + "/" + oid + "/" + condition

func tellOnce(publication string, oid uint32, condition string) bool {
	_, seen := told.LoadOrStore(fmt.Sprintf("%s/%d/%s", publication, oid, condition), true)
	return !seen
}

// virtualState is a table with virtual generated columns that a watch
// covers.
type virtualState struct {
	oid        uint32
	schema     string
	name       string
	columns    []string
	identity   string // relreplident
	hasKey     bool
	member     bool // of the publication, by itself
	ownWatch   bool // an active per-table watch
	inSchema   bool // of a watched schema
	underWatch bool // a partition of a watched partitioned table
}

func (v virtualState) qualified() string { return ident.Qualified(v.schema, v.name) }

func (v virtualState) usable() bool { return v.identity == "i" || (v.identity == "d" && v.hasKey) }

// virtualStates lists the tables with virtual generated columns that a watch
// covers without column list: a per-table watch without --columns or
// --exclude-columns (those keep their primary key as identity), a watched
// schema, or a watched partitioned table above them.
func (r *Registry) virtualStates(ctx context.Context, tx pgx.Tx) ([]virtualState, error) {
	if version, err := replication.ServerVersion(ctx, tx); err != nil || version < 180000 {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT * FROM (
		SELECT c.oid, n.nspname, c.relname,
			(SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
			 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v') AS columns,
			c.relreplident::text,
			EXISTS (SELECT 1 FROM pg_index pk WHERE pk.indrelid = c.oid AND pk.indisprimary),
			EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
				WHERE p.pubname = $1 AND pr.prrelid = c.oid),
			EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.active AND w.table_oid = c.oid),
			EXISTS (SELECT 1 FROM pgaudit_cdc.schema_watches s WHERE s.active AND s.schema_name = n.nspname),
			EXISTS (SELECT 1 FROM pg_partition_ancestors(c.oid) pa JOIN pgaudit_cdc.watches w ON w.table_oid = pa.relid AND w.active
				WHERE pa.relid <> c.oid::regclass) AS under_watch,
			EXISTS (SELECT 1 FROM pgaudit_cdc.watches w WHERE w.active AND w.table_oid = c.oid
				AND (w.columns IS NOT NULL OR w.exclude_columns IS NOT NULL)) AS controlled
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND `+hasVirtualColumns+`) t
		ORDER BY 2, 3`, r.publication)
	if err != nil {
		return nil, fmt.Errorf("listing the tables with virtual generated columns: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (virtualState, error) {
		var v virtualState
		var controlled bool
		err := row.Scan(&v.oid, &v.schema, &v.name, &v.columns, &v.identity, &v.hasKey, &v.member, &v.ownWatch, &v.inSchema, &v.underWatch, &controlled)
		if controlled {
			v.ownWatch, v.inSchema, v.underWatch = false, false, false // its watch's primary key identity stands
		}
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the tables with virtual generated columns: %w", err)
	}
	var out []virtualState
	for _, v := range all {
		if v.ownWatch || v.inSchema || v.underWatch {
			out = append(out, v)
		}
	}
	return out, nil
}

// relieveVirtualColumns gives the tables with virtual generated columns that
// a watch covers and that have REPLICA IDENTITY FULL (set before they got
// the columns, or before they joined a watched schema) or NOTHING REPLICA
// IDENTITY DEFAULT when they have a primary key, so that they accept UPDATE
// and DELETE. It never takes a table out of the publication: one without a
// primary key stays audited and PostgreSQL refuses its UPDATE and DELETE. It
// returns a notice naming what it did, and the tables it cannot help, with
// the fix. It skips the round when a watch or unwatch holds the registry
// lock.
func (r *Registry) relieveVirtualColumns(ctx context.Context) (*VirtualColumnsNotice, error) {
	tx, err := r.housekeepingTx(ctx)
	if tx == nil || err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	states, err := r.virtualStates(ctx, tx)
	if err != nil {
		return nil, err
	}
	notice := &VirtualColumnsNotice{}
	for _, v := range states {
		name := v.qualified()
		cols := strings.Join(v.columns, ", ")
		switch {
		case v.identity != "d" && v.identity != "i" && v.hasKey:
			if err := alterIdentity(ctx, tx, v.schema, v.name, "DEFAULT", "setting REPLICA IDENTITY DEFAULT on "+name+" (it has virtual generated columns, and with FULL PostgreSQL refuses its UPDATE and DELETE)"); err != nil {
				return nil, err
			}
			notice.add(name, fmt.Sprintf("%s has virtual generated column(s) (%s), which PostgreSQL cannot publish: with REPLICA IDENTITY FULL it would refuse every UPDATE and DELETE, so it now has REPLICA IDENTITY DEFAULT (its primary key) and its UPDATE/DELETE events carry the key only as old row (old_is_key_only); for whole old rows make the columns STORED (drop and add them again with STORED)", name, cols))
		case v.usable():
		case v.inSchema && !v.ownWatch && !v.underWatch:
			// Published with its schema (syncSchemaMembership adds it in
			// this round when it is not yet a member): never left out.
			if !tellOnce(r.publication, v.oid, "refused in schema") {
				continue
			}
			notice.add(name, fmt.Sprintf("%s is published with its watched schema %q, and PostgreSQL refuses its UPDATE and DELETE while it has virtual generated column(s) (%s), which PostgreSQL cannot publish, and no primary key (SQLSTATE 55000 or 42P10); add a primary key (pgaudit-cdc then gives it REPLICA IDENTITY DEFAULT), make the columns STORED (drop and add them again with STORED), or unwatch the schema; with the DDL event trigger installed (run watch or run as a superuser, or run the CREATE EVENT TRIGGER statements of `pgaudit-cdc setup --print-sql` as one) PostgreSQL refuses such DDL in a watched schema instead", name, v.schema, cols))
		default:
			if !tellOnce(r.publication, v.oid, "refused") {
				continue
			}
			notice.add(name, fmt.Sprintf("%s is watched and has virtual generated column(s) (%s), which PostgreSQL cannot publish, and REPLICA IDENTITY %s without a primary key: PostgreSQL refuses every UPDATE and DELETE on it while it is published (SQLSTATE 42P10 or 55000); add a primary key (pgaudit-cdc then gives it REPLICA IDENTITY DEFAULT), make the columns STORED, or unwatch it", name, cols, decode.ReplicaIdentityName(v.identity[0])))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing the replica identity of tables with virtual generated columns: %w", err)
	}
	if len(notice.Tables) == 0 {
		return nil, nil
	}
	return notice, nil
}

// virtualOf returns the tables of schema that have virtual generated
// columns (PostgreSQL 18+), each with whether its replica identity lets it
// accept UPDATE and DELETE once published (the schema watch publishes the
// others too: see schemaTablesToAdd).
func virtualOf(ctx context.Context, tx pgx.Tx, schema string) (map[string]bool, error) {
	if version, err := replication.ServerVersion(ctx, tx); err != nil || version < 180000 {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT c.relname, `+usableWithVirtualColumns+` FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND `+hasVirtualColumns, schema)
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q with virtual generated columns: %w", schema, err)
	}
	out := map[string]bool{}
	var name string
	var usable bool
	_, err = pgx.ForEachRow(rows, []any{&name, &usable}, func() error {
		out[name] = usable
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q with virtual generated columns: %w", schema, err)
	}
	return out, nil
}

// schemaTablesToAdd lists the tables of schema that a schema watch adds to
// the publication: all those not yet members
// (replication.SchemaTablesOutside). keyed names the tables listed that have
// virtual generated columns and a usable replica identity: they join with
// their primary key (or index) as identity, not FULL. Those with virtual
// generated columns and no primary key join too, never left out: an audit
// tool must not stop auditing a table silently, and PostgreSQL refusing
// their UPDATE and DELETE is loud (relieveVirtualColumns names them with the
// fixes; the event trigger refuses the DDL that makes them).
func (r *Registry) schemaTablesToAdd(ctx context.Context, tx pgx.Tx, schema string) (tables []pgx.Identifier, keyed []string, err error) {
	outside, err := replication.SchemaTablesOutside(ctx, tx, r.publication, schema)
	if err != nil {
		return nil, nil, err
	}
	usable, err := virtualOf(ctx, tx, schema)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range outside {
		if fine, isVirtual := usable[t[1]]; isVirtual && fine {
			keyed = append(keyed, ident.Qualified(t[0], t[1]))
		}
		tables = append(tables, t)
	}
	return tables, keyed, nil
}

// KeepFromFull reports whether the table of oid has virtual generated
// columns (PostgreSQL 18+), which REPLICA IDENTITY FULL must not cover, and
// whether it has a primary key. The agent asks it too, to tell a table kept
// off FULL on purpose from a weakened one.
func KeepFromFull(ctx context.Context, q replication.Querier, oid uint32) (virtual, hasKey bool, err error) {
	err = q.QueryRow(ctx, `SELECT `+hasVirtualColumns+`, EXISTS (SELECT 1 FROM pg_index pk WHERE pk.indrelid = c.oid AND pk.indisprimary)
		FROM pg_class c WHERE c.oid = $1`, oid).Scan(&virtual, &hasKey)
	if err != nil {
		return false, false, fmt.Errorf("reading the columns of table %d: %w", oid, err)
	}
	return virtual, hasKey, nil
}
