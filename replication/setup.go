package replication

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
)

// RegistryTable and SchemaRegistryTable are the watch registry's tables in
// migrations.Schema. Both are in the publication, so registry changes reach a
// running agent in commit order with the data.
const (
	RegistryTable       = "watches"
	SchemaRegistryTable = "schema_watches"
)

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
		return fmt.Errorf("wal_level is %q but logical decoding needs \"logical\": set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical; on Amazon RDS/Aurora set rds.logical_replication = 1, on Cloud SQL cloudsql.logical_decoding = on, on Azure wal_level = logical in server parameters) and restart PostgreSQL", level)
	}
	return nil
}

// EnsurePublication creates the publication, holding the registry table,
// when it does not exist. publish_via_partition_root reports changes of
// partitions under the partitioned table that is watched.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, publication string) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", publication).Scan(&exists); err != nil {
		return fmt.Errorf("looking up publication %q: %w", publication, err)
	}
	if exists {
		return ensureRegistryPublished(ctx, conn, publication)
	}
	sql := "CREATE PUBLICATION " + pgx.Identifier{publication}.Sanitize() +
		" FOR TABLE " + pgx.Identifier{migrations.Schema, RegistryTable}.Sanitize() +
		", " + pgx.Identifier{migrations.Schema, SchemaRegistryTable}.Sanitize() +
		" WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)"
	if _, err := conn.Exec(ctx, sql); err != nil {
		if isCode(err, "42710") { // created meanwhile by a concurrent call
			return nil
		}
		return fmt.Errorf("creating publication %q (the role needs CREATE on the database and ownership of the watched tables): %w", publication, err)
	}
	return nil
}

func ensureRegistryPublished(ctx context.Context, conn *pgx.Conn, publication string) error {
	for _, table := range []string{RegistryTable, SchemaRegistryTable} {
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
		if _, err := conn.Exec(ctx, sql); err != nil && !isCode(err, "42710") {
			return fmt.Errorf("adding the watch registry to publication %q: %w", publication, err)
		}
	}
	return nil
}

// ErrWrongSlot is wrapped when the named slot exists but belongs to another
// database or output plugin.
var ErrWrongSlot = errors.New("slot belongs to another database or plugin")

// SlotInfo is what pg_replication_slots says about a slot.
type SlotInfo struct {
	Exists            bool
	Plugin            string
	Database          string
	Active            bool
	ActivePID         int32
	ConfirmedFlushLSN decode.LSN
	RestartLSN        decode.LSN
}

// LookupSlot reads a slot's state.
func LookupSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	var (
		info              SlotInfo
		pid               *int32
		confirmed, restrt *string
		plugin, database  *string
	)
	err := conn.QueryRow(ctx, `SELECT plugin, database, active, active_pid,
			confirmed_flush_lsn::text, restart_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &database, &info.Active, &pid, &confirmed, &restrt)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, nil
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("looking up replication slot %q: %w", slot, err)
	}
	info.Exists = true
	if plugin != nil {
		info.Plugin = *plugin
	}
	if database != nil {
		info.Database = *database
	}
	if pid != nil {
		info.ActivePID = *pid
	}
	if confirmed != nil {
		info.ConfirmedFlushLSN, _ = ParseLSN(*confirmed)
	}
	if restrt != nil {
		info.RestartLSN, _ = ParseLSN(*restrt)
	}
	return info, nil
}

// ParseLSN parses the X/X form.
func ParseLSN(s string) (decode.LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("invalid LSN %q: %w", s, err)
	}
	return decode.LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// EnsureSlot creates the logical replication slot (plugin pgoutput) when it
// does not exist, so that changes are retained from this moment on, whether or
// not an agent is running. It must not run inside a transaction that has
// written: slot creation waits for every running writing transaction.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	info, err := LookupSlot(ctx, conn, slot)
	if err != nil {
		return err
	}
	if !info.Exists {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		_, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
		switch {
		case err == nil:
			return nil
		case isCode(err, "42710"): // created concurrently
			info, err = LookupSlot(ctx, conn, slot)
			if err != nil {
				return err
			}
		case isCode(err, "53400"):
			return fmt.Errorf("creating replication slot %q: all replication slots are in use: raise max_replication_slots (and restart PostgreSQL) or drop an unused slot: %w", slot, err)
		case isCode(err, "42501"):
			return fmt.Errorf("creating replication slot %q: the role lacks the REPLICATION attribute: run ALTER ROLE <role> REPLICATION as a superuser: %w", slot, err)
		case isCode(err, "55000"):
			return fmt.Errorf("creating replication slot %q: %w (set wal_level = logical and restart PostgreSQL)", slot, err)
		default:
			return fmt.Errorf("creating replication slot %q: %w", slot, err)
		}
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

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
