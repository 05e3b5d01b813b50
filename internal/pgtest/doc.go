// Package pgtest starts a throwaway PostgreSQL cluster for integration tests
// and hands out fresh, empty databases.
//
// A test binary that needs PostgreSQL calls Run from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
//
// Run starts one cluster per test binary (initdb into a temporary directory,
// wal_level=logical, listening on 127.0.0.1 and a free port), runs the tests,
// then stops the cluster and removes its directory. Tests call DSN to get a
// connection string for a database created just for them; it is dropped
// (together with any replication slots that belong to it) when the test ends.
//
// If the environment variable PGAUDIT_TEST_DATABASE_URL is set, it must be a
// superuser URL (postgres://...) of an existing server; no cluster is started
// and databases are created and dropped on that server instead.
//
// The server binaries (initdb, pg_ctl, postgres) are looked up with
// pg_config --bindir, then next to initdb on PATH, then in
// /usr/lib/postgresql/<version>/bin (highest version first). If none are
// found, Run reports it on stderr and returns exit code 1: tests are never
// skipped for lack of a server. When running as root, initdb and pg_ctl are
// run as the postgres OS user through runuser.
//
// Database DSNs are URLs with a query part, e.g.
// postgres://postgres@127.0.0.1:PORT/DBNAME?sslmode=disable, so a test can
// append "&replication=database" for a replication connection.
package pgtest
