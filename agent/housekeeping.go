package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// defaultHousekeepingInterval spaces the maintenance rounds
// (Config.HousekeepingInterval).
const defaultHousekeepingInterval = 15 * time.Second

// housekeeper does the agent's maintenance on a goroutine and a database
// connection of its own, so that receiving never waits on it: slot
// statistics, dead-letter counts, following dropped and renamed tables,
// restoring REPLICA IDENTITY FULL and schema-watch membership. ALTER TABLE
// can wait for locks; the replication session must not.
type housekeeper struct {
	a   *Agent
	now chan struct{}
}

func newHousekeeper(a *Agent) *housekeeper {
	return &housekeeper{a: a, now: make(chan struct{}, 1)}
}

// poke asks for a round at once (without blocking).
func (h *housekeeper) poke() {
	select {
	case h.now <- struct{}{}:
	default:
	}
}

// run does a round at once, then every Config.HousekeepingInterval or when
// poked, until ctx ends. It connects, and reconnects, by itself.
func (h *housekeeper) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	failed := 0 // connection attempts failed in a row
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.now:
		}
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(ctx, h.a.cfg.DatabaseURL)
			if err != nil {
				// While it cannot connect, nothing restores REPLICA
				// IDENTITY FULL, sets an unlogged partition LOGGED or
				// follows a dropped table: say so, once and then every
				// tenth attempt, unless the agent is stopping.
				if failed++; ctx.Err() == nil && failed%10 == 1 {
					h.a.log.Warn("housekeeping cannot connect to the database; until it can, weakened replica identities are not restored, unlogged partitions not set LOGGED and dropped or renamed tables not followed: check max_connections and the role's CONNECTION LIMIT",
						"attempts", failed, "err", err)
				}
				h.a.m.Retries.WithLabelValues("housekeeping_connect").Inc()
				t.Reset(h.a.cfg.HousekeepingInterval)
				continue
			}
			failed = 0
			conn = c
		}
		h.round(ctx, conn)
		t.Reset(h.a.cfg.HousekeepingInterval)
	}
}

// round is one maintenance round. A step that fails because the agent is
// stopping (ctx, the agent's, ended) is no failure: it is logged at debug
// level only, so that a clean stop ends without warnings. A round that runs
// out of its own 10 s is a failure.
func (h *housekeeper) round(ctx context.Context, conn *pgx.Conn) {
	a := h.a
	stopping := ctx
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	warn := func(msg string, err error) {
		if stopping.Err() != nil {
			a.log.Debug(msg+" (the agent is stopping)", "err", err)
			return
		}
		a.log.Warn(msg, "err", err)
	}
	slot, err := replication.LookupSlot(ctx, conn, a.cfg.Slot)
	var current string
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&current)
	}
	if err != nil {
		warn("reading the slot's statistics failed", err)
	} else if cur, perr := pgoutput.ParseLSN(current); perr == nil && slot.Exists && slot.RestartLSN != 0 && cur >= slot.RestartLSN {
		a.m.RetainedWAL.Set(float64(cur - slot.RestartLSN))
	}
	registry := watches.NewRegistry(conn, a.cfg.Publication, a.cfg.Slot)
	dropped, changed, err := registry.FollowLifecycle(ctx)
	if err != nil {
		warn("following dropped, renamed, swapped and detached watched tables failed", err)
	}
	if len(dropped) > 0 {
		a.log.Warn("watched tables were dropped; their watches ended (DROP events). A new table of the same name is not audited until watched", "tables", strings.Join(dropped, ", "))
	}
	if len(changed) > 0 {
		a.log.Warn("followed watched tables' DDL without the DDL event trigger: a table that took a watched name, inherits from a watched table or left a watched partitioned table is audited from now on, not from its DDL (install the event triggers: pgaudit-cdc setup --print-sql)", "changes", strings.Join(changed, "; "))
	}
	h.keepLogged(stopping, ctx, registry, warn)
	h.keepTruncatesAudited(stopping, registry, warn)
	fixed, err := registry.FixReplicaIdentity(ctx)
	var kept *watches.VirtualColumnsNotice
	if errors.As(err, &kept) {
		a.log.Warn("tables with virtual generated columns (PostgreSQL 18) are never given REPLICA IDENTITY FULL; the detail says, table by table, what that means for their events and writes, and the fix",
			"tables", strings.Join(kept.Tables, ", "), "detail", kept.Error())
		err = withoutNotice(err, kept)
	}
	if err != nil {
		warn("restoring REPLICA IDENTITY FULL on watched tables failed; their UPDATE/DELETE events carry the key only (old_is_key_only) until it succeeds", err)
	}
	if len(fixed) > 0 {
		a.log.Warn("restored REPLICA IDENTITY FULL on watched tables; their UPDATE/DELETE events carry full old rows again", "tables", strings.Join(fixed, ", "))
	}
	if pending, err := deadletters.New(conn, a.cfg.Slot).Count(ctx); err != nil {
		a.log.Debug("counting dead letters failed", "err", err)
	} else {
		a.m.DeadLettersPending.Set(float64(pending))
	}
}

// keepLogged declares the UNLOGGED tables under watches (their changes
// meanwhile are not in the WAL: UNLOGGED events for partitions) and sets
// them LOGGED again, each rewrite in a statement of its own with a budget
// of its own: a large table's would not fit the round's.
func (h *housekeeper) keepLogged(stopping, ctx context.Context, registry *watches.Registry, warn func(string, error)) {
	a := h.a
	unlogged, err := registry.DeclareUnlogged(ctx)
	if err != nil {
		warn("looking for unlogged tables under watched tables failed", err)
		return
	}
	if len(unlogged) == 0 {
		return
	}
	a.m.UnloggedPartitions.Add(float64(len(unlogged)))
	names := make([]string, len(unlogged))
	for i, u := range unlogged {
		names[i] = ident.Qualified(u.Table.Schema, u.Table.Name) + " (under " + u.Under + ")"
	}
	a.log.Error("tables under watched tables were UNLOGGED: their changes meanwhile are not in the WAL, so not in the audit trail (UNLOGGED events declare it for partitions); setting them LOGGED again. Install the event triggers (pgaudit-cdc setup --print-sql) to keep them LOGGED from their DDL on",
		"tables", strings.Join(names, ", "))
	fixCtx, cancel := context.WithTimeout(stopping, 2*time.Minute)
	defer cancel()
	for _, u := range unlogged {
		if err := registry.SetLogged(fixCtx, u.Table); err != nil {
			name := ident.Qualified(u.Table.Schema, u.Table.Name)
			warn("could not set "+name+" LOGGED: its changes stay out of the WAL, so out of the audit trail, until its owner runs ALTER TABLE "+name+" SET LOGGED (the agent tries again every round)", err)
		}
	}
}

// keepTruncatesAudited puts back the TRUNCATE triggers that tables under
// watched partitioned tables lost, and says which were missing: a TRUNCATE
// of one meanwhile is not in the trail (UNAUDITED events declare it).
//
// It has a budget of its own, as keepLogged has: each trigger waits up to
// two seconds for its table's lock, and a few busy tables would otherwise
// use up the round's.
func (h *housekeeper) keepTruncatesAudited(stopping context.Context, registry *watches.Registry, warn func(string, error)) {
	a := h.a
	ctx, cancel := context.WithTimeout(stopping, time.Minute)
	defer cancel()
	holes, err := registry.KeepTruncatesAudited(ctx)
	if err != nil {
		warn("checking the TRUNCATE triggers of watched partitions failed", err)
	}
	var lost, failed, busy []string
	for _, t := range holes {
		name := t.Table + " (under " + t.Under + ")"
		switch t.State {
		case "busy":
			busy = append(busy, name)
			continue
		case "failed":
			failed = append(failed, name)
		default:
			lost = append(lost, name+" "+t.State)
		}
		a.m.UnauditedTruncates.WithLabelValues(t.State).Inc()
	}
	if len(lost) > 0 {
		a.log.Error("the triggers that audit TRUNCATE of partitions of watched tables were dropped or disabled by their owners: a TRUNCATE of them meanwhile is not in the audit trail (UNAUDITED events declare it); they are put back. Install the event triggers (pgaudit-cdc setup --print-sql) to put them back in the DDL's own transaction",
			"tables", strings.Join(lost, ", "))
	}
	if len(failed) > 0 {
		a.log.Error("the triggers that audit TRUNCATE of partitions of watched tables cannot be created: a TRUNCATE of them is not in the audit trail (UNAUDITED events declare it); GRANT their owner role to the owner of schema pgaudit_cdc",
			"tables", strings.Join(failed, ", "))
	}
	if len(busy) > 0 {
		a.log.Warn("the triggers that audit TRUNCATE of partitions of watched tables could not be put back: a transaction holds the tables' locks (the next round tries again; the hole is declared already)",
			"tables", strings.Join(busy, ", "))
	}
}

// withoutNotice is err without the notice joined to it (nil when that was
// all).
func withoutNotice(err error, notice error) error {
	if err == notice {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var rest []error
	for _, e := range joined.Unwrap() {
		if e != notice {
			rest = append(rest, e)
		}
	}
	return errors.Join(rest...)
}
