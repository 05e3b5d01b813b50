// Package migrations holds the versioned SQL that creates and evolves the
// pgaudit_cdc schema (watch registry, dead letters), and applies it.
//
// Files are named NNNN_description.sql and applied in order, each in its own
// transaction, under an advisory lock so that concurrent agents and CLI calls
// do not race. Applied versions are recorded in pgaudit_cdc.schema_migrations;
// applying is idempotent.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Schema is the schema pgaudit-cdc owns in the audited database.
const Schema = "pgaudit_cdc"

// The tables of Schema that travel through the publication with the data:
// the watch registry (per table and per schema), whose changes a running
// agent applies in commit order; the control table, whose rows authenticate
// skip, backfill and checkpoint messages in their transaction; and the
// partitions of watched partitioned tables, whose comings and goings are
// ATTACH and DETACH events; and the rewrites of watched tables' values by
// DDL, REWRITE events.
const (
	RegistryTable       = "watches"
	SchemaRegistryTable = "schema_watches"
	ControlTable        = "control"
	PartitionTable      = "partitions"
	RewriteTable        = "rewrites"
)

// PublishedTables lists them.
var PublishedTables = []string{RegistryTable, SchemaRegistryTable, ControlTable, PartitionTable, RewriteTable}

//go:embed *.sql
var files embed.FS

// lockKey is the pg_advisory_xact_lock key that serialises migrations
// ("pgaudit-cdc" folded into 63 bits).
const lockKey = 0x7067617564697400

// Migration is one versioned SQL file.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("reading embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		if !ok {
			return nil, fmt.Errorf("BUG: migration file %q is not named NNNN_description.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("BUG: migration file %q is not named NNNN_description.sql", name)
		}
		body, err := files.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Apply brings the pgaudit_cdc schema up to date and returns how many
// migrations it applied.
func Apply(ctx context.Context, conn *pgx.Conn) (int, error) {
	all, err := All()
	if err != nil {
		return 0, err
	}
	applied := 0
	for _, m := range all {
		done, err := applyOne(ctx, conn, m)
		if err != nil {
			return applied, err
		}
		if done {
			applied++
		}
	}
	return applied, nil
}

func applyOne(ctx context.Context, conn *pgx.Conn, m Migration) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("starting migration %s: %w", m.Name, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(lockKey)); err != nil {
		return false, fmt.Errorf("locking for migration %s: %w", m.Name, err)
	}
	var hasSchema bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", Schema).Scan(&hasSchema); err != nil {
		return false, fmt.Errorf("checking schema %s: %w", Schema, err)
	}
	if !hasSchema {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{Schema}.Sanitize()); err != nil {
			return false, fmt.Errorf("creating schema %s (the role needs CREATE on the database, or create the schema for it): %w", Schema, err)
		}
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS pgaudit_cdc.schema_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return false, fmt.Errorf("creating pgaudit_cdc.schema_migrations: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pgaudit_cdc.schema_migrations WHERE version = $1)", m.Version).Scan(&exists); err != nil {
		return false, fmt.Errorf("reading applied migrations: %w", err)
	}
	if exists {
		return false, nil
	}
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("applying migration %s: %w", m.Name, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO pgaudit_cdc.schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
		return false, fmt.Errorf("recording migration %s: %w", m.Name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing migration %s: %w", m.Name, err)
	}
	return true, nil
}

// UpToDate reports whether the schema has every migration this build
// knows (on a standby, which cannot apply them, status says whether what
// it reads is current).
func UpToDate(ctx context.Context, conn *pgx.Conn) (bool, error) {
	all, err := All()
	if err != nil {
		return false, err
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('pgaudit_cdc.schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return false, fmt.Errorf("looking for the applied migrations: %w", err)
	}
	if !exists {
		return false, nil
	}
	versions := make([]int32, len(all))
	for i, m := range all {
		versions[i] = int32(m.Version)
	}
	var applied int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgaudit_cdc.schema_migrations WHERE version = ANY($1)`, versions).Scan(&applied); err != nil {
		return false, fmt.Errorf("reading the applied migrations: %w", err)
	}
	return applied == len(all), nil
}
