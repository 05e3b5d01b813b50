// Package pgcluster starts a throwaway PostgreSQL cluster (initdb + pg_ctl in
// a temporary directory, wal_level=logical, a free port, fsync off), for the
// integration tests and for `pgaudit-cdc demo`. As root the server runs as
// the postgres OS user through runuser, since initdb refuses root. Server
// binaries are looked for with pg_config, on PATH, and under
// /usr/lib/postgresql/<version>/bin.
package pgcluster
