package preflight

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// errFix is the fix for a failed query: privilege, the grant to make, when
// PostgreSQL refused for lack of a privilege (SQLSTATE 42501), else a
// pointer to the error itself, which says what went wrong.
func errFix(err error, privilege string) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
		return privilege
	}
	return "the error above is what PostgreSQL (or the connection) said: check --database-url, that the server is up, and its log"
}

// hasPhysicalStandby reports whether this server has physical slots or
// walsenders that stream no logical slot.
func hasPhysicalStandby(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var n int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical')
		+ (SELECT count(*) FROM pg_stat_replication r
			WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid AND s.slot_type = 'logical'))`).Scan(&n); err != nil {
		return false, fmt.Errorf("looking for physical standbys: %w", err)
	}
	return n > 0, nil
}

// physicalStandbys is what a primary knows of its physical standbys.
type physicalStandbys struct {
	slots  []string // every persistent physical slot
	active []string // the physical slots a walsender streams through now
	// slotless counts walsenders streaming without any slot (standbys
	// without primary_slot_name); names holds their application_name
	// where this role may see it.
	slotless int
	names    []string
}

func readPhysicalStandbys(ctx context.Context, conn *pgx.Conn) (physicalStandbys, error) {
	var ps physicalStandbys
	rows, err := conn.Query(ctx, `SELECT slot_name::text, active FROM pg_replication_slots
		WHERE slot_type = 'physical' AND NOT temporary ORDER BY 1`)
	if err != nil {
		return ps, fmt.Errorf("reading the physical slots: %w", err)
	}
	type slotRow struct {
		name   string
		active bool
	}
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slotRow, error) {
		var s slotRow
		err := r.Scan(&s.name, &s.active)
		return s, err
	})
	if err != nil {
		return ps, fmt.Errorf("reading the physical slots: %w", err)
	}
	for _, s := range slots {
		ps.slots = append(ps.slots, s.name)
		if s.active {
			ps.active = append(ps.active, s.name)
		}
	}
	// A base backup's walsender (state "backup") is no standby.
	if err := conn.QueryRow(ctx, `SELECT count(*), coalesce(array_agg(application_name ORDER BY application_name)
			FILTER (WHERE coalesce(application_name, '') <> ''), '{}')
		FROM pg_stat_replication r
		WHERE coalesce(r.state, '') <> 'backup'
			AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.active_pid = r.pid)`).Scan(&ps.slotless, &ps.names); err != nil {
		return ps, fmt.Errorf("reading pg_stat_replication: %w", err)
	}
	return ps, nil
}

// splitSlotList splits a synchronized_standby_slots value as PostgreSQL
// does (SplitIdentifierString): comma-separated, blanks trimmed, "quoted"
// names kept as they are, others folded to lower case.
func splitSlotList(s string) []string {
	var out []string
	for rest := strings.TrimSpace(s); rest != ""; {
		var name string
		if rest[0] == '"' {
			var b strings.Builder
			i := 1
			for i < len(rest) {
				if rest[i] == '"' {
					if i+1 < len(rest) && rest[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(rest[i])
				i++
			}
			name, rest = b.String(), strings.TrimSpace(rest[i:])
			rest = strings.TrimPrefix(rest, ",")
		} else {
			var ok bool
			name, rest, ok = strings.Cut(rest, ",")
			name = strings.ToLower(strings.TrimSpace(name))
			if !ok {
				rest = ""
			}
		}
		if name != "" {
			out = append(out, name)
		}
		rest = strings.TrimSpace(rest)
	}
	return out
}

// standbyFix is what each standby needs besides the primary's list.
const standbyFix = "on each standby set sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, and dbname in primary_conninfo"

// checkPrimaryFailover checks, on a primary (17+), that the slot is a
// failover slot and that synchronized_standby_slots names the physical slot
// of every standby that streams from it: without that, the agent can
// receive (and confirm) changes a standby has not received, and a failover
// to that standby forks the audit trail.
func checkPrimaryFailover(ctx context.Context, conn *pgx.Conn, slot string, add func(Result)) {
	failover := checkFailoverSlot(ctx, conn, slot, add)
	ps, err := readPhysicalStandbys(ctx, conn)
	if err != nil {
		add(Result{Name: "synchronized_standby_slots", Status: Fail, Detail: err.Error(),
			Fix: errFix(err, "grant the role pg_read_all_stats (GRANT pg_read_all_stats TO ROLE) so that it sees the standbys")})
		return
	}
	var sss string
	if err := conn.QueryRow(ctx, "SELECT current_setting('synchronized_standby_slots')").Scan(&sss); err != nil {
		add(unchecked("synchronized_standby_slots", err, "let the role read synchronized_standby_slots (GRANT pg_read_all_settings TO the role)"))
		return
	}
	sl, err := classifyStandbySlots(ctx, conn, splitSlotList(sss), ps)
	if err != nil {
		add(unchecked("synchronized_standby_slots", err, "grant the role read access to pg_catalog.pg_replication_slots"))
		return
	}
	checkStandbySlots(sl, ps, failover, add)
	if ps.slotless > 0 && failover {
		who := fmt.Sprintf("%d standby(s)", ps.slotless)
		if len(ps.names) > 0 {
			who += " (" + strings.Join(ps.names, ", ") + ")"
		}
		add(Result{Name: "standby without a slot", Status: Warn,
			Detail: who + " stream without a physical slot: such a standby cannot sync the logical slot, and synchronized_standby_slots cannot name it; a failover to it loses the slot (a GAP)",
			Fix:    "on the primary SELECT pg_create_physical_replication_slot('standby1'); on the standby ALTER SYSTEM SET primary_slot_name = 'standby1'; SELECT pg_reload_conf(); then name it in synchronized_standby_slots"})
	}
}

// checkFailoverSlot checks the slot is, or will be created as, a failover
// slot, and says whether it is.
func checkFailoverSlot(ctx context.Context, conn *pgx.Conn, slot string, add func(Result)) bool {
	info, err := replication.LookupSlot(ctx, conn, slot)
	switch {
	case err != nil:
		add(Result{Name: "failover slot", Status: Fail, Detail: err.Error(), Fix: errFix(err, "grant the role read access to pg_catalog.pg_replication_slots")})
	case !info.Exists:
		add(Result{Name: "failover slot", Status: OK, Detail: fmt.Sprintf("%q will be created as a failover slot", slot)})
	case !info.Failover:
		add(Result{Name: "failover slot", Status: Warn,
			Detail: fmt.Sprintf("%q is not a failover slot (made before PostgreSQL 17 or by an earlier pgaudit-cdc): a standby cannot keep a copy, and a failover loses it (a GAP)", slot),
			Fix:    fmt.Sprintf("stop the agent, then run over a replication connection: psql \"dbname=DB replication=database\" -c 'ALTER_REPLICATION_SLOT %s (FAILOVER true)'", slot)})
	default:
		add(Result{Name: "failover slot", Status: OK, Detail: fmt.Sprintf("%q is a failover slot", slot)})
	}
	return err == nil && (!info.Exists || info.Failover)
}

// standbySlots sorts the slots synchronized_standby_slots names (listed)
// against those standbys stream through.
type standbySlots struct {
	listed   []string
	missing  []string // listed, but no usable physical slot
	usable   []string // listed, and a usable physical slot
	unlisted []string // a standby streams through it, not listed
	idle     []string // usable and listed, but no standby streams through it
}

func classifyStandbySlots(ctx context.Context, conn *pgx.Conn, listed []string, ps physicalStandbys) (standbySlots, error) {
	sl := standbySlots{listed: listed}
	for _, name := range listed {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'
			AND coalesce(wal_status, '') <> 'lost')`, name).Scan(&ok); err != nil {
			return sl, err
		}
		if ok {
			sl.usable = append(sl.usable, name)
		} else {
			sl.missing = append(sl.missing, name)
		}
	}
	for _, name := range ps.active {
		if !slices.Contains(listed, name) {
			sl.unlisted = append(sl.unlisted, name)
		}
	}
	for _, name := range sl.usable {
		if !slices.Contains(ps.active, name) {
			sl.idle = append(sl.idle, name)
		}
	}
	return sl, nil
}

// checkStandbySlots judges synchronized_standby_slots: every standby that
// may be promoted named, and every slot named in use.
func checkStandbySlots(sl standbySlots, ps physicalStandbys, failover bool, add func(Result)) {
	listed, missing, usable, unlisted, idle := sl.listed, sl.missing, sl.usable, sl.unlisted, sl.idle
	// What the list should be: the usable slots it names, and the slots
	// standbys stream through.
	want := append(slices.Clone(usable), unlisted...)
	suggest := "the physical slot of each standby that may be promoted"
	switch {
	case len(want) > 0:
		suggest = "'" + strings.Join(want, ",") + "'"
	case len(ps.slots) > 0:
		suggest = "'" + strings.Join(ps.slots, ",") + "'"
	}
	alter := fmt.Sprintf("ALTER SYSTEM SET synchronized_standby_slots = %s; SELECT pg_reload_conf();", suggest)
	shown := strings.Join(listed, ",")

	switch {
	case len(missing) > 0:
		add(Result{Name: "synchronized_standby_slots", Status: Fail,
			Detail: fmt.Sprintf("names %s, which is not a usable physical slot: logical decoding waits for it, so capture stalls", strings.Join(missing, ", ")),
			Fix:    fmt.Sprintf("create the standby's physical slot (SELECT pg_create_physical_replication_slot('NAME')) and point the standby's primary_slot_name at it, or correct the list: %s", alter)})
	case len(unlisted) > 0:
		detail := fmt.Sprintf("a standby streams through physical slot %s, which synchronized_standby_slots (%q) does not name: the agent can receive, deliver and confirm changes that standby has not received; if it is promoted, the audit trail holds transactions its database never had and its copy of the slot can be past the promotion point, a forked audit trail",
			strings.Join(unlisted, ", "), shown)
		if !failover {
			add(Result{Name: "synchronized_standby_slots", Status: Warn, Detail: detail + " (the slot is not a failover slot yet, see \"failover slot\")",
				Fix: alter + " " + standbyFix})
			break
		}
		add(Result{Name: "synchronized_standby_slots", Status: Fail, Detail: detail, Fix: alter + " " + standbyFix})
	case len(listed) == 0 && len(ps.slots) == 0 && ps.slotless == 0:
		add(Result{Name: "synchronized_standby_slots", Status: OK, Detail: "empty, and no physical standby to fail over to"})
	case len(listed) == 0:
		add(Result{Name: "synchronized_standby_slots", Status: Warn,
			Detail: "empty: the agent can receive changes no standby has received yet; after a failover the audit trail can hold transactions the new primary never had, and the standby's copy of the slot may be behind",
			Fix:    fmt.Sprintf("name the standbys' physical slots: %s %s", alter, standbyFix)})
	case len(idle) > 0:
		active := "''"
		if len(ps.active) > 0 {
			active = "'" + strings.Join(ps.active, ",") + "'"
		}
		add(Result{Name: "synchronized_standby_slots", Status: Warn,
			Detail: fmt.Sprintf("%s: no standby streams through %s now, and logical decoding waits for every slot named: the agent receives nothing new until that standby is back", shown, strings.Join(idle, ", ")),
			Fix:    fmt.Sprintf("start the standby, or take its slot off the list: ALTER SYSTEM SET synchronized_standby_slots = %s; SELECT pg_reload_conf();", active)})
	default:
		add(Result{Name: "synchronized_standby_slots", Status: OK, Detail: shown + ": changes reach the agent only after these standbys have them"})
	}
}

// StandbyCopy is a standby's copy of the slot (PostgreSQL 17+ slot
// synchronisation), as doctor and status show it.
type StandbyCopy struct {
	// ReplayLSN is the WAL this standby has replayed
	// (pg_last_wal_replay_lsn()), zero when unknown.
	ReplayLSN pgoutput.LSN
	// Slot is the copy (Exists false: none); Slot.Synced says it is synced
	// from the primary.
	Slot replication.SlotInfo
	// Temporary: the copy is being created and not yet persisted (it is
	// until the primary's slot has passed what this standby replayed); a
	// promotion drops it.
	Temporary bool
	// BehindReplayBytes is ReplayLSN minus the copy's confirmed_flush_lsn:
	// how much WAL this standby has that the copy has not confirmed; after
	// a promotion it is decoded again (and absorbed by the read-back).
	BehindReplayBytes *int64
}

// Usable reports whether a promotion now keeps the slot, at the copy's
// position: synced, persistent and valid.
func (c StandbyCopy) Usable() bool {
	return c.Slot.Exists && c.Slot.Synced && !c.Temporary && !c.Slot.Invalidated()
}

// ReadStandbyCopy reads this standby's copy of slot. It writes nothing.
func ReadStandbyCopy(ctx context.Context, conn *pgx.Conn, slot string) (StandbyCopy, error) {
	var c StandbyCopy
	var err error
	if c.Slot, err = replication.LookupSlot(ctx, conn, slot); err != nil {
		return c, err
	}
	var replay, confirmed *string
	var temporary *bool
	// The replay position and the copy's position in one snapshot, so that
	// the difference matches both.
	err = conn.QueryRow(ctx, `WITH r AS (SELECT pg_last_wal_replay_lsn() AS lsn)
		SELECT r.lsn::text, s.temporary, s.confirmed_flush_lsn::text, CASE WHEN r.lsn IS NULL OR s.confirmed_flush_lsn IS NULL THEN NULL ELSE greatest(pg_wal_lsn_diff(r.lsn, s.confirmed_flush_lsn), 0)::bigint END
		FROM r LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, slot).Scan(&replay, &temporary, &confirmed, &c.BehindReplayBytes)
	if err != nil {
		return c, fmt.Errorf("reading the standby's replay position and copy of slot %q: %w", slot, err)
	}
	if replay != nil {
		if c.ReplayLSN, err = pgoutput.ParseLSN(*replay); err != nil {
			return c, fmt.Errorf("reading the standby's replay position: %w", err)
		}
	}
	c.Temporary = temporary != nil && *temporary
	if confirmed != nil {
		if c.Slot.ConfirmedFlushLSN, err = pgoutput.ParseLSN(*confirmed); err != nil {
			return c, fmt.Errorf("reading the standby's copy of slot %q: %w", slot, err)
		}
	}
	return c, nil
}

// checkStandbyFailover checks, on a standby (17+), the settings that keep a
// synced copy of the slot, and the copy itself.
func checkStandbyFailover(ctx context.Context, conn *pgx.Conn, slot string, add func(Result)) {
	var role string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil {
		add(unchecked("failover", err, "check that the connection to the standby works"))
		return
	}
	readGrant := func(name string) string {
		return fmt.Sprintf("let the role read %s: GRANT pg_read_all_settings TO %s (or run doctor as a superuser)", name, ident.SQL(role))
	}
	setting := func(name string) (string, error) {
		var v string
		err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
		return v, err
	}
	onOff := func(name string) {
		value, err := setting(name)
		switch {
		case err != nil:
			add(Result{Name: name, Status: Warn, Detail: "cannot read it: " + err.Error(), Fix: errFix(err, readGrant(name))})
		case value == "on":
			add(Result{Name: name, Status: OK, Detail: "on"})
		default:
			add(Result{Name: name, Status: Fail, Detail: value + " on this standby: it keeps no usable copy of the slot, and a failover to it loses the slot (a GAP)",
				Fix: "ALTER SYSTEM SET " + name + " = on; SELECT pg_reload_conf();"})
		}
	}
	onOff("sync_replication_slots")
	onOff("hot_standby_feedback")

	switch primarySlot, err := setting("primary_slot_name"); {
	case err != nil:
		add(Result{Name: "primary_slot_name", Status: Warn, Detail: "cannot read it: " + err.Error(), Fix: errFix(err, readGrant("primary_slot_name"))})
	case primarySlot == "":
		add(Result{Name: "primary_slot_name", Status: Fail, Detail: "empty: slot synchronisation needs the standby to stream through a physical slot",
			Fix: "create one on the primary (SELECT pg_create_physical_replication_slot('standby1')), then ALTER SYSTEM SET primary_slot_name = 'standby1' here and SELECT pg_reload_conf(); name it in the primary's synchronized_standby_slots"})
	default:
		add(Result{Name: "primary_slot_name", Status: OK, Detail: primarySlot + " (the primary's synchronized_standby_slots must name it)"})
	}

	// primary_conninfo may hold a password: it is parsed, never shown.
	conninfo, err := setting("primary_conninfo")
	if err != nil {
		add(Result{Name: "primary_conninfo", Status: Warn, Detail: "cannot read it: " + err.Error(), Fix: errFix(err, readGrant("primary_conninfo"))})
	} else if db, perr := conninfoDBName(conninfo); perr != nil {
		add(Result{Name: "primary_conninfo", Status: Fail, Detail: "cannot be parsed: " + perr.Error(),
			Fix: "correct primary_conninfo (keywords 'host=... user=... dbname=DB', or a URI 'postgresql://user@host/DB'): ALTER SYSTEM SET primary_conninfo = '...'; SELECT pg_reload_conf()"})
	} else if db == "" {
		add(Result{Name: "primary_conninfo", Status: Fail, Detail: "has no dbname: the slot sync worker cannot connect to the primary's database",
			Fix: "add dbname=<the watched database> to primary_conninfo (ALTER SYSTEM SET primary_conninfo = '... dbname=DB'; or in a URI, postgresql://.../DB; then SELECT pg_reload_conf())"})
	} else {
		detail := "names a database"
		if !strings.ContainsAny(db, "@:/") {
			// A name with these may be a misparsed password's tail: not shown.
			detail = fmt.Sprintf("names database %q", db)
		}
		add(Result{Name: "primary_conninfo", Status: OK, Detail: detail})
	}

	c, err := ReadStandbyCopy(ctx, conn, slot)
	switch info := c.Slot; {
	case err != nil:
		add(Result{Name: "synced slot", Status: Fail, Detail: err.Error(), Fix: errFix(err, "grant the role read access to pg_catalog.pg_replication_slots")})
	case !info.Exists:
		add(Result{Name: "synced slot", Status: Warn, Detail: fmt.Sprintf("no copy of slot %q on this standby yet: a failover to it now loses the slot (a GAP)", slot),
			Fix: "make the slot a failover slot on the primary and complete the settings above; the copy appears once the primary's slot has advanced past what this standby has replayed"})
	case !info.Synced:
		add(Result{Name: "synced slot", Status: Warn, Detail: fmt.Sprintf("slot %q exists here but is not synced from the primary", slot),
			Fix: "make it a failover slot on the primary (ALTER_REPLICATION_SLOT ... (FAILOVER true)) and complete the settings above"})
	case info.Invalidated():
		add(Result{Name: "synced slot", Status: Fail, Detail: fmt.Sprintf("the copy of slot %q is invalidated (%s%s)", slot, info.WALStatus, info.InvalidationReason),
			Fix: "check hot_standby_feedback and primary_slot_name; the copy is re-created from the primary's slot"})
	case c.Temporary:
		add(Result{Name: "synced slot", Status: Warn, Detail: fmt.Sprintf("the copy of slot %q is still being created (temporary): a failover to this standby now loses the slot (a GAP)", slot),
			Fix: "let the agent run: the copy is kept once the primary's slot has advanced past what this standby has replayed"})
	default:
		add(Result{Name: "synced slot", Status: OK, Detail: fmt.Sprintf("slot %q synced, confirmed up to %s, %s behind this standby's replayed WAL (%s)",
			slot, info.ConfirmedFlushLSN, bytesText(c.BehindReplayBytes), c.ReplayLSN)})
	}
}

// bytesText is a byte count for people.
func bytesText(p *int64) string {
	if p == nil {
		return "an unknown amount"
	}
	return fmt.Sprintf("%d bytes", *p)
}
