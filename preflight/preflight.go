// Package preflight checks that a database (and spine) can run pgaudit-cdc,
// and says, for every problem, the one thing to do about it — including the
// parameter names of the managed services (Amazon RDS and Aurora, Google
// Cloud SQL, Azure Database for PostgreSQL, Supabase).
package preflight

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Status of one check.
type Status string

// Check statuses.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's outcome. Fix is set unless Status is OK.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Options say what to check.
type Options struct {
	Slot        string
	Publication string
	// Spine, when set, is asked for /healthz and its accepted kinds.
	Spine *publish.Client
}

// Failed reports whether any result is a failure.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

// Run performs every check on conn. It returns what it could check; a query
// error becomes a failed check that says the check could not be made, and
// why (see unchecked), not an error.
func Run(ctx context.Context, conn *pgx.Conn, o Options) []Result {
	var rs []Result
	add := func(r Result) { rs = append(rs, r) }

	var versionNum int
	var version, dbName string
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, current_setting('server_version'), pg_is_in_recovery(), current_database()").Scan(&versionNum, &version, &inRecovery, &dbName); err != nil {
		add(Result{Name: "server version", Status: Fail, Detail: err.Error(), Fix: "check that --database-url points at a PostgreSQL server"})
		return rs
	}
	switch {
	case versionNum < 140000:
		add(Result{Name: "server version", Status: Fail, Detail: "PostgreSQL " + version,
			Fix: "upgrade to PostgreSQL 14 or later: pgaudit-cdc needs pgoutput with logical messages"})
	default:
		add(Result{Name: "server version", Status: OK, Detail: "PostgreSQL " + version})
	}
	checkWALLevel(ctx, conn, add)

	slot, slotErr := replication.LookupSlot(ctx, conn, o.Slot)
	slotExists, slotActive := slot.Exists, slot.Active
	if slotErr != nil {
		add(Result{Name: "replication slot", Status: Fail, Detail: slotErr.Error(), Fix: errFix(slotErr, "grant the role read access to pg_catalog.pg_replication_slots")})
	}

	cv := readCapture(ctx, conn, o.Slot, inRecovery)
	checkCapture(cv, inRecovery, add)

	var maxSlots, usedSlots, maxSenders, usedSenders int
	if err := conn.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots),
		current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)`).Scan(&maxSlots, &usedSlots, &maxSenders, &usedSenders); err != nil {
		add(unchecked("replication slots", err, "grant the role read access to pg_catalog.pg_replication_slots"))
		add(unchecked("WAL senders", err, "grant the role read access to pg_catalog.pg_stat_replication"))
	} else {
		checkSlotsAndSenders(o.Slot, slotExists, slotActive, maxSlots, usedSlots, maxSenders, usedSenders, add)
	}

	role := checkRole(ctx, conn, add)
	checkSchema(ctx, conn, role, dbName, add)
	checkPublication(ctx, conn, role, dbName, o.Publication, add)

	// Without the slot's state ("replication slot" failed) there is nothing
	// to judge it by.
	if slotErr == nil {
		add(slotCheck(o.Slot, dbName, versionNum, slot, inRecovery, cv))
	}
	checkKeepSize(ctx, conn, add)

	rs = append(rs, checkVersionFeatures(ctx, conn, versionNum, inRecovery, o.Slot, o.Publication)...)
	rs = append(rs, checkWatches(ctx, conn)...)
	if o.Spine != nil {
		rs = append(rs, checkSpine(ctx, conn, o.Spine)...)
	}
	return rs
}

func checkWALLevel(ctx context.Context, conn *pgx.Conn, add func(Result)) {
	var walLevel string
	switch err := conn.QueryRow(ctx, "SELECT current_setting('wal_level')").Scan(&walLevel); {
	case err != nil:
		add(unchecked("wal_level", err, "let the role read wal_level (GRANT pg_read_all_settings TO the role)"))
	case walLevel == "logical":
		add(Result{Name: "wal_level", Status: OK, Detail: "logical"})
	default:
		add(Result{Name: "wal_level", Status: Fail, Detail: fmt.Sprintf("%q", walLevel),
			Fix: "set wal_level = logical and restart PostgreSQL (self-managed: ALTER SYSTEM SET wal_level = logical; Amazon RDS/Aurora: rds.logical_replication = 1 in the parameter group; Google Cloud SQL: flag cloudsql.logical_decoding = on; Azure Database for PostgreSQL: server parameter wal_level = LOGICAL; Supabase: already logical)"})
	}
}

// role is the connected role, as far as it could be read (err).
type role struct {
	name                   string
	super, repl, canCreate bool
	err                    error
}

// checkRole checks the role may stream (REPLICATION, superuser, or
// rds_replication), and returns what it is.
func checkRole(ctx context.Context, conn *pgx.Conn, add func(Result)) role {
	var r role
	r.err = conn.QueryRow(ctx, `SELECT current_user, rolsuper, rolreplication, has_database_privilege(current_database(), 'CREATE')
		FROM pg_roles WHERE rolname = current_user`).Scan(&r.name, &r.super, &r.repl, &r.canCreate)
	switch {
	case r.err != nil:
		add(unchecked("REPLICATION privilege", r.err, "grant the role read access to pg_catalog.pg_roles"))
	case !r.super && !r.repl:
		var rdsRepl bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication' AND pg_has_role(current_user, oid, 'MEMBER'))`).Scan(&rdsRepl); err != nil {
			add(unchecked("REPLICATION privilege", err, "grant the role read access to pg_catalog.pg_roles"))
		} else if !rdsRepl {
			add(Result{Name: "REPLICATION privilege", Status: Fail, Detail: fmt.Sprintf("role %q has neither REPLICATION nor superuser", r.name),
				Fix: fmt.Sprintf("run ALTER ROLE %s REPLICATION as a superuser (Amazon RDS/Aurora: GRANT rds_replication TO %s; Cloud SQL: ALTER USER %s WITH REPLICATION; Azure: ALTER ROLE %s WITH REPLICATION as azure_pg_admin; Supabase: ALTER ROLE %s WITH REPLICATION in the SQL editor)", ident.SQL(r.name), ident.SQL(r.name), ident.SQL(r.name), ident.SQL(r.name), ident.SQL(r.name))})
		} else {
			add(Result{Name: "REPLICATION privilege", Status: OK, Detail: "member of rds_replication"})
		}
	default:
		add(Result{Name: "REPLICATION privilege", Status: OK, Detail: fmt.Sprintf("role %q (superuser: %t, replication: %t)", r.name, r.super, r.repl)})
	}
	return r
}

// checkSchema checks the pgaudit_cdc schema is the role's, or can be.
func checkSchema(ctx context.Context, conn *pgx.Conn, r role, dbName string, add func(Result)) {
	// No row: the schema does not exist.
	var schemaOwned *bool
	err := conn.QueryRow(ctx, `SELECT pg_has_role(current_user, nspowner, 'USAGE') FROM pg_namespace WHERE nspname = 'pgaudit_cdc'`).Scan(&schemaOwned)
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
	}
	switch {
	case err != nil:
		add(unchecked("pgaudit_cdc schema", err, "grant the role read access to pg_catalog.pg_namespace"))
	case schemaOwned != nil && *schemaOwned:
		add(Result{Name: "pgaudit_cdc schema", Status: OK, Detail: "exists, owned by this role"})
	case r.err != nil: // who the role is and what it may create is unknown
		add(unchecked("pgaudit_cdc schema", r.err, "grant the role read access to pg_catalog.pg_roles"))
	case schemaOwned != nil:
		add(Result{Name: "pgaudit_cdc schema", Status: Fail, Detail: "exists but belongs to another role",
			Fix: fmt.Sprintf("run ALTER SCHEMA pgaudit_cdc OWNER TO %s (and its tables) as its owner", ident.SQL(r.name))})
	case r.canCreate:
		add(Result{Name: "pgaudit_cdc schema", Status: OK, Detail: "will be created (CREATE on the database granted)"})
	default:
		add(Result{Name: "pgaudit_cdc schema", Status: Fail, Detail: "missing, and the role may not create it",
			Fix: fmt.Sprintf("run GRANT CREATE ON DATABASE %s TO %s, or CREATE SCHEMA pgaudit_cdc AUTHORIZATION %s, as a superuser", ident.SQL(dbName), ident.SQL(r.name), ident.SQL(r.name))})
	}
}

// checkPublication checks the publication is the role's, or can be.
func checkPublication(ctx context.Context, conn *pgx.Conn, r role, dbName, publication string, add func(Result)) {
	// No row: the publication does not exist.
	var pubExists, pubOwned bool
	err := conn.QueryRow(ctx, `SELECT true, pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1`, publication).Scan(&pubExists, &pubOwned)
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
	}
	switch {
	case err != nil:
		add(unchecked("publication", err, "grant the role read access to pg_catalog.pg_publication"))
	case pubExists && pubOwned:
		add(Result{Name: "publication", Status: OK, Detail: fmt.Sprintf("%q exists", publication)})
	case r.err != nil: // who the role is and what it may create is unknown
		add(unchecked("publication", r.err, "grant the role read access to pg_catalog.pg_roles"))
	case pubExists:
		add(Result{Name: "publication", Status: Fail, Detail: fmt.Sprintf("%q belongs to another role", publication),
			Fix: fmt.Sprintf("run ALTER PUBLICATION %s OWNER TO %s, or choose another --publication", ident.SQL(publication), ident.SQL(r.name))})
	case r.canCreate || r.super:
		add(Result{Name: "publication", Status: OK, Detail: fmt.Sprintf("%q will be created by watch or run", publication)})
	default:
		add(Result{Name: "publication", Status: Fail, Detail: fmt.Sprintf("%q missing and the role may not create it", publication),
			Fix: fmt.Sprintf("run GRANT CREATE ON DATABASE %s TO %s as a superuser", ident.SQL(dbName), ident.SQL(r.name))})
	}
}

func checkKeepSize(ctx context.Context, conn *pgx.Conn, add func(Result)) {
	var keep string
	switch err := conn.QueryRow(ctx, "SELECT current_setting('max_slot_wal_keep_size')").Scan(&keep); {
	case err != nil:
		add(unchecked("max_slot_wal_keep_size", err, "let the role read max_slot_wal_keep_size (GRANT pg_read_all_settings TO the role)"))
	case keep == "-1":
		add(Result{Name: "max_slot_wal_keep_size", Status: Warn, Detail: "unlimited: WAL is kept for as long as the spine is unreachable",
			Fix: "nothing is lost this way, but watch pgaudit_cdc_slot_retained_wal_bytes so the disk does not fill; a limit protects the disk at the cost of invalidating the slot"})
	default:
		add(Result{Name: "max_slot_wal_keep_size", Status: OK, Detail: keep + " (the slot is invalidated past it: alert on retained WAL well before)"})
	}
}

// unchecked is the result of a check whose query failed: it could not be
// made, and the error says why (a dropped connection, a missing privilege:
// errFix tells them apart).
func unchecked(name string, err error, privilege string) Result {
	return Result{Name: name, Status: Fail, Detail: "could not be checked: " + err.Error(), Fix: errFix(err, privilege)}
}

// checkSlotsAndSenders checks that a replication slot and a WAL sender are
// free for the agent (or that it holds them already).
func checkSlotsAndSenders(slot string, slotExists, slotActive bool, maxSlots, usedSlots, maxSenders, usedSenders int, add func(Result)) {
	switch {
	case slotExists:
		add(Result{Name: "replication slots", Status: OK, Detail: fmt.Sprintf("%d of %d used, ours among them", usedSlots, maxSlots)})
	case usedSlots >= maxSlots:
		add(Result{Name: "replication slots", Status: Fail, Detail: fmt.Sprintf("%d of %d used, none free for %q", usedSlots, maxSlots, slot),
			Fix: "raise max_replication_slots and restart PostgreSQL (Amazon RDS/Aurora, Cloud SQL, Azure: the parameter of the same name), or drop an unused slot with pg_drop_replication_slot"})
	default:
		add(Result{Name: "replication slots", Status: OK, Detail: fmt.Sprintf("%d of %d used", usedSlots, maxSlots)})
	}
	if usedSenders >= maxSenders && !slotActive {
		add(Result{Name: "WAL senders", Status: Fail, Detail: fmt.Sprintf("%d of %d in use", usedSenders, maxSenders),
			Fix: "raise max_wal_senders and restart PostgreSQL (on managed services: the parameter of the same name)"})
	} else {
		add(Result{Name: "WAL senders", Status: OK, Detail: fmt.Sprintf("%d of %d in use", usedSenders, maxSenders)})
	}
}

func checkWatches(ctx context.Context, conn *pgx.Conn) []Result {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'pgaudit_cdc' AND tablename = 'watches')`).Scan(&exists); err != nil {
		return []Result{unchecked("watches", err, "grant the role read access to pg_catalog.pg_tables")}
	}
	if !exists {
		return []Result{{Name: "watches", Status: Warn, Detail: "no watch registry yet", Fix: "register a table with pgaudit-cdc watch TABLE --kind KIND --source SOURCE"}}
	}
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', w.schema_name, w.table_name), c.oid IS NOT NULL,
			coalesce(pg_has_role(current_user, c.relowner, 'USAGE'), false), coalesce(c.relreplident::text, '')
		FROM pgaudit_cdc.watches w LEFT JOIN pg_class c ON c.oid = w.table_oid WHERE w.active ORDER BY 1`)
	if err != nil {
		return []Result{{Name: "watches", Status: Fail, Detail: err.Error(), Fix: errFix(err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.watches")}}
	}
	defer rows.Close()
	var rs []Result
	n := 0
	for rows.Next() {
		var name, ident string
		var present, owned bool
		if err := rows.Scan(&name, &present, &owned, &ident); err != nil {
			return append(rs, Result{Name: "watches", Status: Fail, Detail: err.Error()})
		}
		n++
		switch {
		case !present:
			rs = append(rs, Result{Name: "watch " + name, Status: Warn, Detail: "the table no longer exists", Fix: "run pgaudit-cdc unwatch " + name})
		case ident != "f":
			rs = append(rs, Result{Name: "watch " + name, Status: Warn, Detail: "REPLICA IDENTITY is not FULL: old rows carry the key only",
				Fix: "run pgaudit-cdc watch again for it, or ALTER TABLE " + name + " REPLICA IDENTITY FULL"})
		case !owned:
			rs = append(rs, Result{Name: "watch " + name, Status: Warn, Detail: "this role does not own the table: re-watch and unwatch will fail",
				Fix: "GRANT the table's owner role to this role"})
		}
	}
	if err := rows.Err(); err != nil {
		return append(rs, Result{Name: "watches", Status: Fail, Detail: err.Error()})
	}
	var triggers int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY ($1)`,
		watches.EventTriggerNames).Scan(&triggers); err != nil {
		rs = append(rs, unchecked("event triggers", err, "grant the role read access to pg_catalog.pg_event_trigger"))
	} else if n > 0 && triggers < len(watches.EventTriggerNames) {
		rs = append(rs, Result{Name: "event triggers", Status: Warn,
			Detail: "without them, new tables of watched schemas join the publication (their changes until then are not captured), tables joining a watch get REPLICA IDENTITY FULL, drops and renames of watched tables reach the audit trail, and a watched partition's dropped or disabled TRUNCATE trigger is put back, only through the agent's housekeeping (within 15 s)",
			Fix:    "as a superuser, run the CREATE EVENT TRIGGER statements printed by pgaudit-cdc setup --print-sql"})
	}
	rs = append(rs, checkWatchedNames(ctx, conn)...)
	rs = append(rs, checkUnloggedPartitions(ctx, conn)...)
	rs = append(rs, checkTruncateTriggers(ctx, conn)...)
	rs = append(rs, checkInheritanceChildren(ctx, conn)...)
	if n == 0 {
		return append(rs, Result{Name: "watches", Status: Warn, Detail: "no table is watched", Fix: "register a table with pgaudit-cdc watch TABLE --kind KIND --source SOURCE"})
	}
	return append(rs, Result{Name: "watches", Status: OK, Detail: strconv.Itoa(n) + " active"})
}

// checkWatchedNames looks for tables holding the name a watch was made for
// that no watch covers. While the watch's table lives on under another name
// (a table swap), the DDL event trigger or the agent's housekeeping watches
// the new table too: one that is not watched is a hole, a failure. After a
// DROP ended the watch, a new table of the name is a new table: a warning.
func checkWatchedNames(ctx context.Context, conn *pgx.Conn) []Result {
	type taken struct {
		Name, Holder string
		Active       bool
	}
	rows, err := conn.Query(ctx, `SELECT DISTINCT ON (c.oid) format('%I.%I', n.nspname, c.relname),
			coalesce((SELECT format('%I.%I', hn.nspname, h.relname) FROM pg_class h
				JOIN pg_namespace hn ON hn.oid = h.relnamespace WHERE h.oid = w.table_oid),
				format('%I.%I', w.schema_name, w.table_name)), w.active
		FROM pgaudit_cdc.watches w
		JOIN pg_namespace n ON n.nspname = coalesce(w.watched_schema, w.schema_name)
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = coalesce(w.watched_table, w.table_name) AND c.relkind IN ('r', 'p')
		WHERE w.table_oid <> c.oid AND (w.active OR w.dropped_at IS NOT NULL)
			AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches a WHERE a.active AND a.table_oid = c.oid)
		ORDER BY c.oid, w.active DESC, w.updated_at DESC`)
	var names []taken
	if err == nil {
		names, err = pgx.CollectRows(rows, pgx.RowToStructByPos[taken])
	}
	if err != nil {
		return []Result{unchecked("watched names", err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.watches")}
	}
	var rs []Result
	for _, t := range names {
		if t.Active {
			rs = append(rs, Result{Name: "watched names", Status: Fail,
				Detail: t.Name + " holds the name watched " + t.Holder + " was watched as, and is not audited: a table swap the DDL event trigger did not follow",
				Fix:    "pgaudit-cdc watch " + t.Name + " --kind KIND --source SOURCE (and install the event triggers: pgaudit-cdc setup --print-sql)"})
			continue
		}
		rs = append(rs, Result{Name: "re-created table", Status: Warn,
			Detail: t.Name + " was dropped while watched (a DROP event ended its watch) and a new table of that name exists, which is not audited",
			Fix:    "pgaudit-cdc watch " + t.Name + " --kind KIND --source SOURCE, if the new table should be audited"})
	}
	return rs
}

// checkUnloggedPartitions fails on a table under a watched partitioned
// table whose changes are not in the WAL, so not in the trail: an UNLOGGED
// one (migration 0014 sets such tables LOGGED where it can), or a foreign
// table, whose rows live on another server.
func checkUnloggedPartitions(ctx context.Context, conn *pgx.Conn) []Result {
	rows, err := conn.Query(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, c.relname), c.relkind = 'f'
		FROM pgaudit_cdc.watched_partition_tree() t
		JOIN pg_class c ON c.oid = t.relid AND ((c.relkind = 'r' AND c.relpersistence = 'u') OR c.relkind = 'f')
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.level > 0
		ORDER BY 1`)
	type partition struct {
		Name    string
		Foreign bool
	}
	var parts []partition
	if err == nil {
		parts, err = pgx.CollectRows(rows, pgx.RowToStructByPos[partition])
	}
	if err != nil {
		return []Result{unchecked("unlogged partitions", err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.watches")}
	}
	var rs []Result
	for _, p := range parts {
		if p.Foreign {
			rs = append(rs, Result{Name: "foreign partitions", Status: Fail,
				Detail: p.Name + " is a foreign table under a watched partitioned table: its rows live on another server, so their changes are not in this database's WAL nor the audit trail",
				Fix:    "detach it (ALTER TABLE ... DETACH PARTITION " + p.Name + ") and audit the table where its rows live"})
			continue
		}
		rs = append(rs, Result{Name: "unlogged partitions", Status: Fail,
			Detail: p.Name + " is an UNLOGGED partition of a watched table: its changes are not in the WAL, so not in the audit trail",
			Fix:    "ALTER TABLE " + p.Name + " SET LOGGED, as its owner (and install the event triggers, which keep it LOGGED: pgaudit-cdc setup --print-sql)"})
	}
	return rs
}

// checkTruncateTriggers fails on a table under a watched partitioned table
// without its enabled TRUNCATE trigger (migration 0019): a TRUNCATE of it
// by itself would not be in the trail.
func checkTruncateTriggers(ctx context.Context, conn *pgx.Conn) []Result {
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname)
		FROM pgaudit_cdc.partitions x
		JOIN pg_class c ON c.oid = x.table_oid AND c.relkind = 'r'
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE x.attached AND NOT EXISTS (SELECT 1 FROM pg_trigger tr WHERE tr.tgrelid = x.table_oid AND tr.tgenabled = 'A'
			AND tr.tgfoid = 'pgaudit_cdc.partition_truncated()'::regprocedure)
		ORDER BY 1`)
	var names []string
	if err == nil {
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return []Result{unchecked("partition TRUNCATE triggers", err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.partitions")}
	}
	if len(names) == 0 {
		return nil
	}
	return []Result{{Name: "partition TRUNCATE triggers", Status: Fail,
		Detail: "a TRUNCATE of " + strings.Join(names, ", ") + " by itself would not be in the audit trail: the trigger that audits it is missing or disabled (PostgreSQL publishes a partition's changes as its partitioned table's, but not its own TRUNCATE)",
		Fix:    "GRANT the tables' owner role to the owner of schema pgaudit_cdc (the role that first ran pgaudit-cdc); the agent's housekeeping then puts the triggers back within 15 s"}}
}

// checkInheritanceChildren fails on a table that inherits from a watched
// table and is not watched itself: every query of the parent reads its
// rows, which are not audited (migration 0015 watches such tables).
func checkInheritanceChildren(ctx context.Context, conn *pgx.Conn) []Result {
	rows, err := conn.Query(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, c.relname), format('%I.%I', pn.nspname, p.relname)
		FROM pgaudit_cdc.watches w
		JOIN pg_class p ON p.oid = w.table_oid AND p.relkind = 'r'
		JOIN pg_namespace pn ON pn.oid = p.relnamespace
		JOIN pg_inherits i ON i.inhparent = w.table_oid
		JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r'
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.active AND NOT EXISTS (SELECT 1 FROM pgaudit_cdc.watches o WHERE o.table_oid = c.oid AND o.active)
		ORDER BY 1`)
	type child struct{ Name, Parent string }
	var children []child
	if err == nil {
		children, err = pgx.CollectRows(rows, pgx.RowToStructByPos[child])
	}
	if err != nil {
		return []Result{unchecked("inheriting tables", err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.watches")}
	}
	var rs []Result
	for _, c := range children {
		rs = append(rs, Result{Name: "inheriting tables", Status: Fail,
			Detail: c.Name + " inherits from watched " + c.Parent + " and is not watched: queries of " + c.Parent + " read its rows, which are not audited",
			Fix:    "pgaudit-cdc watch " + c.Name + " --kind KIND --source SOURCE (the agent does within 15 s; install the event triggers to have it done in the DDL's transaction: pgaudit-cdc setup --print-sql)"})
	}
	return rs
}

func checkSpine(ctx context.Context, conn *pgx.Conn, spine *publish.Client) []Result {
	if err := spine.Health(ctx); err != nil {
		return []Result{{Name: "spine", Status: Fail, Detail: err.Error(),
			Fix: "check --audit-stream-url (and AUDIT_STREAM_CA_FILE for https) and that audit-stream is running; events wait in the slot meanwhile"}}
	}
	rs := []Result{{Name: "spine", Status: OK, Detail: "answers /healthz"}}
	switch ok, err := spine.ProbePipelining(ctx); {
	case err != nil:
		rs = append(rs, Result{Name: "spine pipelining", Status: Warn, Detail: err.Error(), Fix: "check what stands between pgaudit-cdc and the spine"})
	case ok:
		rs = append(rs, Result{Name: "spine pipelining", Status: OK, Detail: "requests written back to back on one connection are answered in order: events are delivered with several in flight (--max-in-flight)"})
	default:
		rs = append(rs, Result{Name: "spine pipelining", Status: Warn,
			Detail: "the spine, or a proxy in front of it, does not keep pipelined requests: pgaudit-cdc falls back to one event at a time, one round trip each",
			Fix:    "let pgaudit-cdc reach the spine without that proxy, or configure the proxy to keep HTTP/1.1 connections (nginx: proxy_http_version 1.1 and keepalive upstreams); set --max-in-flight 1 to silence this"})
	}
	kinds, err := spine.Kinds(ctx)
	if err != nil {
		return append(rs, Result{Name: "spine kinds", Status: Warn, Detail: err.Error(), Fix: "make sure the spine serves /openapi.json"})
	}
	var watched []string
	rows, err := conn.Query(ctx, `SELECT DISTINCT kind FROM pgaudit_cdc.watches WHERE active ORDER BY 1`)
	if err == nil {
		watched, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return append(rs, unchecked("spine kinds", err, "grant this role USAGE on schema pgaudit_cdc and SELECT on pgaudit_cdc.watches"))
	}
	for _, k := range watched {
		if !slices.Contains(kinds, k) {
			rs = append(rs, Result{Name: "spine kinds", Status: Fail, Detail: fmt.Sprintf("the spine no longer accepts kind %q used by a watch", k),
				Fix: "re-watch the tables with an accepted kind; their refused events are kept as dead letters meanwhile"})
		}
	}
	return rs
}

// captureView is what doctor knows of capture continuity.
type captureView struct {
	schema  bool // pgaudit_cdc.capture_state exists: capture may have started
	checked bool // capture.Check ran (not on a standby)
	a       capture.Assessment
	pending *capture.GapRecord
	err     error
}

// started reports whether capture started and so the slot must not be
// created anew: a gap is pending or detected.
func (cv captureView) started() bool {
	return cv.pending != nil || (cv.checked && cv.a.Verdict == capture.Gap)
}

// readCapture assesses capture continuity. On a standby it only reads the
// pending gap: capture.Check needs pgaudit_cdc.slot_progress, an unlogged
// table a standby cannot read, and continuity is the primary's to judge.
func readCapture(ctx context.Context, conn *pgx.Conn, slot string, inRecovery bool) captureView {
	var cv captureView
	if err := conn.QueryRow(ctx, `SELECT to_regclass('pgaudit_cdc.capture_state') IS NOT NULL`).Scan(&cv.schema); err != nil {
		cv.schema, cv.err = false, fmt.Errorf("looking for pgaudit_cdc.capture_state: %w", err)
		return cv
	}
	if !cv.schema {
		return cv // nothing captured yet (or an older schema the agent migrates)
	}
	if inRecovery {
		if to, err := regclassExists(ctx, conn, "pgaudit_cdc.gaps"); err != nil || !to {
			cv.err = err
			return cv
		}
		cv.pending, cv.err = capture.PendingGap(ctx, conn, slot)
		return cv
	}
	cv.a, cv.pending, cv.err = capture.Check(ctx, conn, slot)
	cv.checked = cv.err == nil
	return cv
}

func regclassExists(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok)
	return ok, err
}

// checkCapture fails when capture has a hole: a pending gap, or a slot that
// is missing, invalidated or advanced although capture started.
func checkCapture(cv captureView, inRecovery bool, add func(Result)) {
	switch {
	case cv.err != nil:
		add(Result{Name: "capture continuity", Status: Fail, Detail: cv.err.Error(),
			Fix: errFix(cv.err, "grant the role USAGE on schema pgaudit_cdc and SELECT on its tables, or run doctor as the role the agent uses")})
	case !cv.schema:
	case cv.pending != nil:
		add(Result{Name: "capture continuity", Status: Fail,
			Detail: fmt.Sprintf("gap #%d pending since %s (%s): %s", cv.pending.ID, cv.pending.DetectedAt.UTC().Format(time.RFC3339), cv.pending.Reason, cv.pending.Detail),
			Fix:    fmt.Sprintf("capture is stopped: accept the gap with `pgaudit-cdc run --accept-gap=%d` (one GAP event is recorded), then run `pgaudit-cdc backfill TABLE` for: %s", cv.pending.ID, strings.Join(cv.pending.Tables, ", "))})
	case inRecovery:
		add(Result{Name: "capture continuity", Status: OK, Detail: "this server is a standby: no gap is pending; continuity is assessed on the primary (run doctor there)"})
	case cv.a.Verdict == capture.Gap:
		add(Result{Name: "capture continuity", Status: Fail, Detail: fmt.Sprintf("%s: %s", cv.a.Reason, cv.a.Detail),
			Fix: "start `pgaudit-cdc run`: it records the gap and stops; then accept it with `pgaudit-cdc run --accept-gap=ID` and backfill the affected tables"})
	case cv.a.Verdict == capture.Continue && cv.a.TimelineMoved:
		add(Result{Name: "capture continuity", Status: Warn, Detail: "the server is on a new timeline and the failover slot continues there; whether the audit trail holds events beyond the promotion point (a fork) is not compared yet",
			Fix: "start `pgaudit-cdc run` with the spine configured: it compares the trail with the new timeline's history, records a fork as a gap, and records the move"})
	case cv.a.Verdict == capture.Continue:
		add(Result{Name: "capture continuity", Status: OK, Detail: "the slot continues the recorded capture"})
	}
}

// gapFix is how to get past a gap: accept the pending one, or let run
// record it first.
func gapFix(cv captureView, what string) string {
	if cv.pending != nil {
		return fmt.Sprintf("accept the gap with `pgaudit-cdc run --accept-gap=%d`: it %s and records one GAP event; then `pgaudit-cdc backfill TABLE` for: %s (README, \"Gaps\")",
			cv.pending.ID, what, strings.Join(cv.pending.Tables, ", "))
	}
	return fmt.Sprintf("start `pgaudit-cdc run`: it records the gap and stops; then `pgaudit-cdc run --accept-gap=ID` %s and records one GAP event; then `pgaudit-cdc backfill TABLE` for the watched tables (README, \"Gaps\")", what)
}

// slotCheck is the "slot" check: the slot's state, and, when it is missing
// or invalidated after capture started, the way past the gap (never a slot
// created or dropped by hand, which would hide the gap).
func slotCheck(name, dbName string, version int, slot replication.SlotInfo, inRecovery bool, cv captureView) Result {
	wrongSlot := slot.Exists && (slot.Plugin != "pgoutput" || slot.Database != dbName)
	switch {
	case wrongSlot:
		return Result{Name: "slot", Status: Fail, Detail: fmt.Sprintf("%q uses plugin %q in database %q", name, slot.Plugin, slot.Database),
			Fix: fmt.Sprintf("choose another --slot, or drop it with SELECT pg_drop_replication_slot('%s')", name)}
	case inRecovery:
		detail := fmt.Sprintf("this server is a standby: the agent streams from the primary's slot %q", name)
		if version >= 170000 {
			detail += "; its copy here is under \"synced slot\""
		}
		return Result{Name: "slot", Status: OK, Detail: detail}
	case !slot.Exists && cv.started():
		reason := "a gap is detected"
		if cv.pending != nil {
			reason = fmt.Sprintf("gap #%d is pending", cv.pending.ID)
		}
		return Result{Name: "slot", Status: Fail,
			Detail: fmt.Sprintf("%q is missing although capture started (%s): the changes it held are lost; do not create it by hand, which would hide the gap", name, reason),
			Fix:    gapFix(cv, "creates a new slot")}
	case !slot.Exists && cv.err != nil:
		return Result{Name: "slot", Status: Warn, Detail: fmt.Sprintf("%q does not exist, and whether capture started could not be read (see \"capture continuity\")", name),
			Fix: "fix what \"capture continuity\" reports; the slot is created only when nothing was captured yet, or when a gap is accepted"}
	case !slot.Exists:
		return Result{Name: "slot", Status: OK, Detail: fmt.Sprintf("%q will be created by watch or run", name)}
	case slot.Invalidated():
		why := slot.InvalidationReason
		if why == "" {
			why = "wal_status " + slot.WALStatus
		}
		return Result{Name: "slot", Status: Fail,
			Detail: fmt.Sprintf("%q was invalidated (%s): WAL it needed was removed, so changes were lost (a GAP); do not drop it by hand, which would hide the gap", name, why),
			Fix:    gapFix(cv, "drops the invalidated slot, creates a new one") + "; raise max_slot_wal_keep_size (or -1) so that it does not happen again"}
	case slot.Active:
		return Result{Name: "slot", Status: OK, Detail: fmt.Sprintf("%q in use by PID %d (an agent is connected)", name, slot.ActivePID)}
	default:
		return Result{Name: "slot", Status: OK, Detail: fmt.Sprintf("%q exists, no agent connected", name)}
	}
}

// checkVersionFeatures checks what depends on the server's version: slot
// invalidation by idle_replication_slot_timeout (18+), and what a failover
// to a standby does to the slot: lost on 16 and earlier; on 17+ kept when the
// slot is a failover slot and the failover set-up is complete (checked from
// the primary, or, when doctor runs against a standby, from the standby).
// version is server_version_num and inRecovery pg_is_in_recovery(), as Run
// read them.
func checkVersionFeatures(ctx context.Context, conn *pgx.Conn, version int, inRecovery bool, slot, publication string) []Result {
	var rs []Result
	add := func(r Result) { rs = append(rs, r) }
	if version >= 180000 {
		checkIdleSlotTimeout(ctx, conn, add)
		checkVirtualGeneratedColumns(ctx, conn, publication, add)
	}
	if inRecovery {
		if version >= 170000 {
			checkStandbyFailover(ctx, conn, slot, add)
		} else {
			add(Result{Name: "failover", Status: Warn,
				Detail: fmt.Sprintf("this server is a standby, and PostgreSQL %d keeps no copy of the logical slot on a standby: if it is promoted, the new primary has no slot %q, and pgaudit-cdc records a GAP and stops until you accept it", version/10000, slot),
				Fix:    "upgrade to PostgreSQL 17 or later for failover slots; until then, after a failover accept the gap with `pgaudit-cdc run --accept-gap=ID` and backfill the watched tables (README, \"Gaps\")"})
		}
		return rs
	}

	if version < 170000 {
		switch has, err := hasPhysicalStandby(ctx, conn); {
		case err != nil:
			add(unchecked("failover", err, "grant the role pg_read_all_stats (GRANT pg_read_all_stats TO ROLE) so that it sees the standbys"))
		case has:
			add(Result{Name: "failover", Status: Warn,
				Detail: fmt.Sprintf("this server has a physical standby, but PostgreSQL %d cannot keep the logical slot on it: after a failover the new primary has no slot %q, and pgaudit-cdc records a GAP and stops until you accept it", version/10000, slot),
				Fix:    "upgrade to PostgreSQL 17 or later for failover slots; until then, after a failover accept the gap with `pgaudit-cdc run --accept-gap=ID` and backfill the watched tables (README, \"Gaps\")"})
		}
		return rs
	}
	checkPrimaryFailover(ctx, conn, slot, add)
	return rs
}

// checkIdleSlotTimeout warns when idle_replication_slot_timeout (18+) can
// invalidate the slot while the agent is stopped.
func checkIdleSlotTimeout(ctx context.Context, conn *pgx.Conn, add func(Result)) {
	var setting, shown string
	if err := conn.QueryRow(ctx, `SELECT setting, current_setting('idle_replication_slot_timeout') FROM pg_settings WHERE name = 'idle_replication_slot_timeout'`).Scan(&setting, &shown); err != nil {
		add(unchecked("idle_replication_slot_timeout", err, "let the role read idle_replication_slot_timeout (GRANT pg_read_all_settings TO the role)"))
		return
	}
	if setting == "0" {
		add(Result{Name: "idle_replication_slot_timeout", Status: OK, Detail: "0: the slot is never invalidated for being idle"})
		return
	}
	add(Result{Name: "idle_replication_slot_timeout", Status: Warn,
		Detail: shown + ": if the agent is stopped (or cannot connect) for longer, PostgreSQL invalidates the slot at the next checkpoint, and the changes since are lost (a GAP)",
		Fix:    "ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf(); or keep it longer than any agent outage you can have (Amazon RDS/Aurora, Cloud SQL, Azure: the parameter of the same name)"})
}

// checkVirtualGeneratedColumns fails for every published table with
// REPLICA IDENTITY FULL and a virtual generated column (PostgreSQL 18+):
// PostgreSQL cannot publish virtual generated columns and so refuses UPDATE
// and DELETE on such a table, breaking the application's writes.
func checkVirtualGeneratedColumns(ctx context.Context, conn *pgx.Conn, publication string, add func(Result)) {
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname),
			string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
		FROM pg_publication_tables t
		JOIN pg_namespace n ON n.nspname = t.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attgenerated = 'v' AND NOT a.attisdropped
		WHERE t.pubname = $1 AND c.relreplident = 'f'
		GROUP BY 1 ORDER BY 1`, publication)
	if err != nil {
		add(unchecked("virtual generated columns", err, "grant the role read access to pg_catalog.pg_publication_tables, pg_class and pg_attribute"))
		return
	}
	type table struct{ name, columns string }
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
		var t table
		err := r.Scan(&t.name, &t.columns)
		return t, err
	})
	if err != nil {
		add(unchecked("virtual generated columns", err, "grant the role read access to pg_catalog.pg_publication_tables, pg_class and pg_attribute"))
		return
	}
	for _, t := range tables {
		add(Result{Name: "virtual generated columns", Status: Fail,
			Detail: fmt.Sprintf("%s has REPLICA IDENTITY FULL and the virtual generated column(s) %s, which PostgreSQL 18 cannot publish: it refuses every UPDATE and DELETE on the table (\"Replica identity must not contain unpublished generated columns\")", t.name, t.columns),
			Fix:    fmt.Sprintf("make the column(s) STORED (drop them and add them again as GENERATED ALWAYS AS (...) STORED: stored generated columns are published), or stop auditing the table with pgaudit-cdc unwatch %s", t.name)})
	}
}
