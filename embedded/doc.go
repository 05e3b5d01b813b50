// Package embedded is pgaudit-cdc's embedded default database: it starts a
// throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary directory,
// wal_level=logical, a free port, fsync off). It is a product feature, the
// cluster `pgaudit-cdc demo` runs on, and the server the integration tests
// and benchmarks start. As root the server runs as
// the postgres OS user through runuser, since initdb refuses root.
//
// PGAUDIT_PG_VERSION=16 chooses the major version: its binaries are looked
// for in PGAUDIT_PG_BINDIRS, in /usr/lib/postgresql/16/bin and in the npm
// cache (<PGAUDIT_PG_CACHE>/pg16, filled by `make pg-versions`), and their
// absence is an error, never a reason to use another version. Without it,
// server binaries are looked for with pg_config, on PATH, and under
// /usr/lib/postgresql/<version>/bin.
//
// StartStandby makes a streaming physical standby of a local cluster from a
// clean copy of its data directory (the npm packages have no
// pg_basebackup); Promote and StopImmediate play a failover.
package embedded
