package replication

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// The tables of pgaudit-cdc's own that are published (their names are the
// migrations' to own): registry changes and control rows reach a running
// agent in commit order with the data.
const (
	RegistryTable       = migrations.RegistryTable
	SchemaRegistryTable = migrations.SchemaRegistryTable
	ControlTable        = migrations.ControlTable
)

// publishedTables are pgaudit-cdc's own tables in the publication.
var publishedTables = migrations.PublishedTables

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidateSlotName checks a replication slot name the way PostgreSQL will, so
// that the mistake is reported before any connection is made.
func ValidateSlotName(name string) error {
	if !slotNameRE.MatchString(name) {
		return fmt.Errorf("invalid slot name %q: use 1 to 63 lower-case letters, digits and underscores", name)
	}
	return nil
}

// ValidatePublicationName checks a publication name.
func ValidatePublicationName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("invalid publication name %q: use 1 to 63 bytes", name)
	}
	return nil
}

// CheckWALLevel fails with instructions when the server cannot do logical
// decoding.
func CheckWALLevel(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level')").Scan(&level); err != nil {
		return fmt.Errorf("reading wal_level: %w", err)
	}
	if level != "logical" {
		return &WALLevelError{Level: level}
	}
	return nil
}

// WALLevelError is returned when the server's wal_level is not logical:
// only the user can fix it. An error reading it (a restart, a lost
// connection) is not one.
type WALLevelError struct{ Level string }

func (e *WALLevelError) Error() string {
	return fmt.Sprintf("wal_level is %q but logical decoding needs \"logical\": set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical; on Amazon RDS/Aurora set rds.logical_replication = 1, on Cloud SQL cloudsql.logical_decoding = on, on Azure wal_level = logical in server parameters) and restart PostgreSQL", e.Level)
}

// RegistryLockKey is the transaction-level advisory lock that serialises
// changes of the watch registry and of the publication's membership (watch,
// unwatch, the agent's housekeeping, the conversion below).
const RegistryLockKey = 0x7067617564697401

// Querier runs a query: a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsurePublication creates the publication, holding the registry table,
// when it does not exist. publish_via_partition_root reports changes of
// partitions under the partitioned table that is watched.
//
// On PostgreSQL 18+ the publication publishes stored generated columns
// (publish_generated_columns = stored), set on an existing publication too:
// their values reach the events, and PostgreSQL 18 refuses UPDATE and DELETE
// on a REPLICA IDENTITY FULL table whose identity holds a generated column
// the publication does not publish.
//
// Every watched table is a member of the publication by itself, schema-wide
// watches included: a publication with FOR TABLES IN SCHEMA members may hold
// no table with a column list, and ignores the row filter of a table in such
// a schema. An existing publication that still holds schemas that way (made
// by an earlier version) is converted here to per-table membership, in one
// transaction, when the role may (see ConvertSchemaMembership).
func EnsurePublication(ctx context.Context, conn *pgx.Conn, publication string) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", publication).Scan(&exists); err != nil {
		return fmt.Errorf("looking up publication %q: %w", publication, err)
	}
	version, err := ServerVersion(ctx, conn)
	if err != nil {
		return err
	}
	if exists {
		if err := ensureRegistryPublished(ctx, conn, publication); err != nil {
			return err
		}
		if version >= 180000 {
			if err := ensureGeneratedColumnsPublished(ctx, conn, publication); err != nil {
				return err
			}
		}
		_, err := ConvertSchemaMembership(ctx, conn, publication)
		return err
	}
	options := PublicationOptions(version)
	tables := make([]string, len(publishedTables))
	for i, t := range publishedTables {
		tables[i] = pgx.Identifier{migrations.Schema, t}.Sanitize()
	}
	sql := "CREATE PUBLICATION " + pgx.Identifier{publication}.Sanitize() +
		" FOR TABLE " + strings.Join(tables, ", ") + " WITH (" + options + ")"
	if _, err := conn.Exec(ctx, sql); err != nil {
		if isCode(err, pgerrcode.DuplicateObject) { // created meanwhile by a concurrent call
			return nil
		}
		if isCode(err, pgerrcode.InsufficientPrivilege) {
			return fmt.Errorf("creating publication %q: the role needs CREATE on the database (GRANT CREATE ON DATABASE ... TO the role, as `pgaudit-cdc setup --print-sql` prints): %w", publication, err)
		}
		return fmt.Errorf("creating publication %q: %w", publication, err)
	}
	return nil
}

// PublicationOptions is the WITH list pgaudit-cdc's publications are
// created with on a server of version (server_version_num).
func PublicationOptions(version int) string {
	options := "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
	if version >= 180000 {
		options += ", publish_generated_columns = stored"
	}
	return options
}

// ensureGeneratedColumnsPublished sets publish_generated_columns = stored on
// an existing publication (PostgreSQL 18+) that does not have it: one made by
// an earlier version of pgaudit-cdc or before an upgrade to 18.
func ensureGeneratedColumnsPublished(ctx context.Context, conn *pgx.Conn, publication string) error {
	var gencols string
	if err := conn.QueryRow(ctx, "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1", publication).Scan(&gencols); err != nil {
		return fmt.Errorf("checking publication %q: %w", publication, err)
	}
	if gencols == "s" {
		return nil
	}
	sql := "ALTER PUBLICATION " + pgx.Identifier{publication}.Sanitize() + " SET (publish_generated_columns = stored)"
	if _, err := conn.Exec(ctx, sql); err != nil {
		if isCode(err, pgerrcode.InsufficientPrivilege) {
			return fmt.Errorf("publishing stored generated columns in publication %q (PostgreSQL 18 refuses UPDATE and DELETE on a watched table with a generated column otherwise): the role must own the publication, or run ALTER PUBLICATION %s SET (publish_generated_columns = stored) as its owner: %w",
				publication, pgx.Identifier{publication}.Sanitize(), err)
		}
		return fmt.Errorf("publishing stored generated columns in publication %q: %w", publication, err)
	}
	return nil
}

func ensureRegistryPublished(ctx context.Context, conn *pgx.Conn, publication string) error {
	for _, table := range publishedTables {
		var member bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
			JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1 AND pr.prrelid = $2::regclass)`,
			publication, pgx.Identifier{migrations.Schema, table}.Sanitize()).Scan(&member)
		if err != nil {
			return fmt.Errorf("checking publication %q: %w", publication, err)
		}
		if member {
			continue
		}
		sql := "ALTER PUBLICATION " + pgx.Identifier{publication}.Sanitize() + " ADD TABLE " + pgx.Identifier{migrations.Schema, table}.Sanitize()
		if _, err := conn.Exec(ctx, sql); err != nil && !isCode(err, pgerrcode.DuplicateObject) {
			if isCode(err, pgerrcode.InsufficientPrivilege) {
				return fmt.Errorf("adding the watch registry to publication %q: the role must own the publication: %w", publication, err)
			}
			return fmt.Errorf("adding the watch registry to publication %q: %w", publication, err)
		}
	}
	return nil
}

// ServerVersion returns server_version_num (150004 for 15.4).
func ServerVersion(ctx context.Context, q Querier) (int, error) {
	var v int
	if err := q.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		return 0, fmt.Errorf("reading the server version: %w", err)
	}
	return v, nil
}

// SchemaMembers returns the schemas publication holds as FOR TABLES IN
// SCHEMA members: only publications made by pgaudit-cdc before per-table
// membership have any. PostgreSQL 14 has no such members.
func SchemaMembers(ctx context.Context, q Querier, publication string) ([]string, error) {
	v, err := ServerVersion(ctx, q)
	if err != nil || v < 150000 {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT n.nspname FROM pg_publication_namespace pn
		JOIN pg_publication p ON p.oid = pn.pnpubid JOIN pg_namespace n ON n.oid = pn.pnnspid
		WHERE p.pubname = $1 ORDER BY 1`, publication)
	if err != nil {
		return nil, fmt.Errorf("reading the schemas of publication %q: %w", publication, err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reading the schemas of publication %q: %w", publication, err)
	}
	return schemas, nil
}

// ConvertSchemaMembership replaces every FOR TABLES IN SCHEMA member of
// publication by the schema's tables, each a member by itself, in one
// transaction: publication changes are transactional, so every change is
// published either through the schema (committed before) or through the
// table (committed after), and none is missed. It returns the schemas
// converted.
//
// It runs only when the role may do all of it: own the publication (or be
// a superuser) and own, or be a member of the owner of, every table to add.
// Otherwise it returns nothing and changes nothing: the old membership keeps
// publishing the schema as before, and a watch that needs the conversion
// (a column list, or a row filter in such a schema) says how to get it.
func ConvertSchemaMembership(ctx context.Context, conn *pgx.Conn, publication string) ([]string, error) {
	schemas, err := SchemaMembers(ctx, conn, publication)
	if err != nil || len(schemas) == 0 {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("converting the schemas of publication %q: %w", publication, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '10s'"); err != nil {
		return nil, fmt.Errorf("converting the schemas of publication %q: %w", publication, err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(RegistryLockKey)); err != nil {
		return nil, fmt.Errorf("locking the watch registry: %w", err)
	}
	// Read again under the lock: a concurrent call may have converted.
	if schemas, err = SchemaMembers(ctx, tx, publication); err != nil || len(schemas) == 0 {
		return nil, err
	}
	var allowed bool
	if err := tx.QueryRow(ctx, `SELECT pg_has_role(p.pubowner, 'USAGE') AND NOT EXISTS (
			SELECT 1 FROM pg_publication_namespace pn JOIN pg_class c ON c.relnamespace = pn.pnnspid
			WHERE pn.pnpubid = p.oid AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
				AND NOT pg_has_role(c.relowner, 'USAGE'))
		FROM pg_publication p WHERE p.pubname = $1`, publication).Scan(&allowed); err != nil {
		return nil, fmt.Errorf("checking the ownership of publication %q and its tables: %w", publication, err)
	}
	if !allowed {
		return nil, nil
	}
	pub := pgx.Identifier{publication}.Sanitize()
	for _, schema := range schemas {
		tables, err := SchemaTablesOutside(ctx, tx, publication, schema)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLES IN SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return nil, fmt.Errorf("converting schema %q of publication %q to per-table membership: %w", schema, publication, err)
		}
		if err := AddTables(ctx, tx, publication, tables); err != nil {
			return nil, fmt.Errorf("converting schema %q of publication %q to per-table membership: %w", schema, publication, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("committing the conversion of publication %q to per-table membership: %w", publication, err)
	}
	return schemas, nil
}

// SchemaTablesOutside lists the tables of schema that a schema-wide watch
// covers (tables and partitioned tables, partitions included, that can be
// published: not unlogged) and that are not members of publication by
// themselves.
func SchemaTablesOutside(ctx context.Context, q Querier, publication, schema string) ([]pgx.Identifier, error) {
	rows, err := q.Query(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $2 AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
			AND NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
				WHERE p.pubname = $1 AND pr.prrelid = c.oid)
		ORDER BY c.oid`, publication, schema)
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q: %w", schema, err)
	}
	tables, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgx.Identifier, error) {
		var s, t string
		err := row.Scan(&s, &t)
		return pgx.Identifier{s, t}, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the tables of schema %q: %w", schema, err)
	}
	return tables, nil
}

// AddTables adds tables, without row filter or column list, to publication
// in one statement. Each ONLY: a table's inheritance children are watched,
// and published, as themselves (migration 0015).
func AddTables(ctx context.Context, tx pgx.Tx, publication string, tables []pgx.Identifier) error {
	if len(tables) == 0 {
		return nil
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = "ONLY " + t.Sanitize()
	}
	_, err := tx.Exec(ctx, "ALTER PUBLICATION "+pgx.Identifier{publication}.Sanitize()+" ADD TABLE "+strings.Join(names, ", "))
	return err
}

// ErrWrongSlot is wrapped when the named slot exists but belongs to another
// database or output plugin.
var ErrWrongSlot = errors.New("slot belongs to another database or plugin")

// SlotInfo is what pg_replication_slots says about a slot. It is the one
// query of that view: status, doctor, the agent and capture continuity all
// read it through LookupSlot.
type SlotInfo struct {
	Exists            bool
	Plugin            string
	Database          string
	Active            bool
	ActivePID         int32
	ConfirmedFlushLSN pgoutput.LSN
	RestartLSN        pgoutput.LSN
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL 13+).
	WALStatus string
	// InvalidationReason is PostgreSQL 17's invalidation_reason; on 16,
	// "conflict" when the slot is marked conflicting.
	InvalidationReason string
	// Failover and Synced are PostgreSQL 17's failover-slot columns.
	Failover bool
	Synced   bool
}

// Invalidated reports whether the slot can no longer deliver every change
// after its confirmed position: its WAL was removed, or it was invalidated.
func (s SlotInfo) Invalidated() bool {
	return s.Exists && (s.WALStatus == "lost" || s.InvalidationReason != "")
}

// LookupSlot reads a slot's state. The row is read as JSON so that columns
// added by later PostgreSQL versions (failover, synced, invalidation_reason)
// are read where they exist, with one query for every version.
func LookupSlot(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, slot string) (SlotInfo, error) {
	var row struct {
		Plugin             *string `json:"plugin"`
		Database           *string `json:"database"`
		Active             bool    `json:"active"`
		ActivePID          *int32  `json:"active_pid"`
		ConfirmedFlushLSN  *string `json:"confirmed_flush_lsn"`
		RestartLSN         *string `json:"restart_lsn"`
		WALStatus          *string `json:"wal_status"`
		InvalidationReason *string `json:"invalidation_reason"`
		Conflicting        *bool   `json:"conflicting"`
		Failover           *bool   `json:"failover"`
		Synced             *bool   `json:"synced"`
	}
	err := q.QueryRow(ctx, `SELECT to_jsonb(s) FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&row)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, nil
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("looking up replication slot %q: %w", slot, err)
	}
	info := SlotInfo{Exists: true, Active: row.Active}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	info.Plugin, info.Database, info.WALStatus = str(row.Plugin), str(row.Database), str(row.WALStatus)
	info.InvalidationReason = str(row.InvalidationReason)
	if info.InvalidationReason == "" && row.Conflicting != nil && *row.Conflicting {
		info.InvalidationReason = "conflict"
	}
	if row.ActivePID != nil {
		info.ActivePID = *row.ActivePID
	}
	if row.ConfirmedFlushLSN != nil {
		if info.ConfirmedFlushLSN, err = pgoutput.ParseLSN(*row.ConfirmedFlushLSN); err != nil {
			return SlotInfo{}, fmt.Errorf("looking up replication slot %q: confirmed_flush_lsn: %w", slot, err)
		}
	}
	if row.RestartLSN != nil {
		if info.RestartLSN, err = pgoutput.ParseLSN(*row.RestartLSN); err != nil {
			return SlotInfo{}, fmt.Errorf("looking up replication slot %q: restart_lsn: %w", slot, err)
		}
	}
	info.Failover = row.Failover != nil && *row.Failover
	info.Synced = row.Synced != nil && *row.Synced
	return info, nil
}

// CreateSlot creates the logical replication slot (plugin pgoutput), so that
// changes are retained from this moment on, whether or not an agent is
// running. A slot created concurrently by another call is not an error. It
// must not run inside a transaction that has written: slot creation waits for
// every running writing transaction.
//
// Only package capture decides when a slot may be created: re-creating a lost
// slot silently would hide the changes it lost.
//
// On PostgreSQL 17+ the slot is a failover slot (failover = true): a standby
// with sync_replication_slots = on keeps a copy of it, so that after a
// promotion the new primary has the slot and capture continues.
func CreateSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	version, err := ServerVersion(ctx, conn)
	if err != nil {
		return err
	}
	// (slot_name, plugin, temporary, twophase, failover) from 17 on.
	sql := "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
	if version >= 170000 {
		sql = "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
	}
	_, err = conn.Exec(ctx, sql, slot)
	switch {
	case err == nil, isCode(err, pgerrcode.DuplicateObject): // created concurrently
		return nil
	case isCode(err, pgerrcode.ConfigurationLimitExceeded):
		return fmt.Errorf("creating replication slot %q: all replication slots are in use: raise max_replication_slots (and restart PostgreSQL) or drop an unused slot: %w", slot, err)
	case isCode(err, pgerrcode.InsufficientPrivilege):
		return fmt.Errorf("creating replication slot %q: the role lacks the REPLICATION attribute: run ALTER ROLE <role> REPLICATION as a superuser: %w", slot, err)
	case isCode(err, pgerrcode.ObjectNotInPrerequisiteState):
		return fmt.Errorf("creating replication slot %q: %w (set wal_level = logical and restart PostgreSQL)", slot, err)
	default:
		return fmt.Errorf("creating replication slot %q: %w", slot, err)
	}
}

// DropSlot drops the slot, ending the walsender that holds it first. Only an
// operator's acceptance of a gap leads here (an invalidated slot).
func DropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	_, err := conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
		WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot)
	if err != nil {
		return fmt.Errorf("ending the walsender of slot %q: %w", slot, err)
	}
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
		if err == nil || isCode(err, pgerrcode.UndefinedObject) { // already gone
			return nil
		}
		if !isCode(err, pgerrcode.ObjectInUse) || attempt >= 50 { // still active
			return fmt.Errorf("dropping replication slot %q: %w", slot, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CheckSlotOwner fails when the slot exists but belongs to another database
// or output plugin.
func CheckSlotOwner(ctx context.Context, conn *pgx.Conn, slot string, info SlotInfo) error {
	if !info.Exists {
		return nil
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return fmt.Errorf("reading current database: %w", err)
	}
	if info.Plugin != "pgoutput" || info.Database != db {
		return fmt.Errorf("replication slot %q exists but is not a pgoutput slot of database %q (plugin %q, database %q): choose another --slot or drop it with SELECT pg_drop_replication_slot('%s'): %w", slot, db, info.Plugin, info.Database, slot, ErrWrongSlot)
	}
	return nil
}

// IsCode reports whether err is a PostgreSQL error with SQLSTATE code.
func IsCode(err error, code string) bool { return isCode(err, code) }

// UserMustFix reports failures no retry can cure: a missing privilege,
// failed authentication, a database that does not exist, wal_level not
// logical, a slot of another database or plugin. The agent stops on them
// (exit 2) instead of retrying, and the CLI exits 2 for them.
func UserMustFix(err error) bool {
	if errors.Is(err, ErrWrongSlot) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case pgerrcode.InsufficientPrivilege, pgerrcode.InvalidAuthorizationSpecification, pgerrcode.InvalidPassword, pgerrcode.InvalidCatalogName:
			return true
		case pgerrcode.ObjectNotInPrerequisiteState:
			return strings.Contains(pgErr.Message, "wal_level")
		}
	}
	return false
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// AdvanceSlot moves slot's confirmed position forward to lsn without
// delivering what lies before it (pg_replication_slot_advance). It is used
// only where everything before lsn is known to be in the audit trail.
func AdvanceSlot(ctx context.Context, conn *pgx.Conn, slot string, lsn pgoutput.LSN) error {
	if _, err := conn.Exec(ctx, "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", slot, lsn.String()); err != nil {
		return Explain(fmt.Errorf("advancing replication slot %q to %s: %w", slot, lsn, err))
	}
	return nil
}

// DecodingStats is a slot's pg_stat_replication_slots row since the last
// reset: the large transactions its walsender streamed while in progress,
// and those it spilled to the server's disk.
type DecodingStats struct {
	StreamTxns, StreamBytes int64
	SpillTxns, SpillBytes   int64
}

// LookupDecodingStats reads a slot's decoding statistics; ok is false when
// the slot has none (it decoded nothing yet, or does not exist).
func LookupDecodingStats(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, slot string) (st DecodingStats, ok bool, err error) {
	err = q.QueryRow(ctx, `SELECT stream_txns, stream_bytes, spill_txns, spill_bytes
		FROM pg_stat_replication_slots WHERE slot_name = $1`, slot).Scan(&st.StreamTxns, &st.StreamBytes, &st.SpillTxns, &st.SpillBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("reading the decoding statistics of slot %s: %w", slot, err)
	}
	return st, true, nil
}
