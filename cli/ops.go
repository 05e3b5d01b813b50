package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/preflight"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Status is what `pgaudit-cdc status --json` prints.
type Status struct {
	Slot struct {
		Name              string `json:"name"`
		Exists            bool   `json:"exists"`
		AgentConnected    bool   `json:"agent_connected"`
		ActivePID         *int32 `json:"active_pid"`
		AgentAddress      string `json:"agent_address,omitempty"`
		ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
		RestartLSN        string `json:"restart_lsn,omitempty"`
		LagBytes          *int64 `json:"lag_bytes"`
		RetainedWALBytes  *int64 `json:"retained_wal_bytes"`
		WALStatus         string `json:"wal_status,omitempty"`
		// Failover and Synced are PostgreSQL 17's failover-slot state: a
		// failover slot is kept by standbys that sync it; on a standby,
		// Synced says its copy is in sync.
		Failover  bool `json:"failover"`
		Synced    bool `json:"synced"`
		OnStandby bool `json:"on_standby"`
		// Decoding is the server's pg_stat_replication_slots row for the
		// slot: how many large transactions it streamed in progress to the
		// agent, and spilled to its own disk.
		Decoding *decodingJSON `json:"decoding,omitempty"`
	} `json:"slot"`
	Publication struct {
		Name   string `json:"name"`
		Exists bool   `json:"exists"`
		Tables int    `json:"tables"`
	} `json:"publication"`
	Capture     captureJSON `json:"capture"`
	Watches     []watchJSON `json:"watches"`
	DeadLetters int64       `json:"dead_letters"`
	// Backfills are those not delivered yet: interrupted while writing, or
	// written beyond the slot's confirmed position.
	Backfills []backfill.Pending `json:"backfills"`
	// Trail is the authenticated trail's state: its keys and last seal.
	Trail trailJSON `json:"trail"`
	// Server says what status looked at: a primary, or a standby (read-only:
	// nothing is migrated or written there).
	Server serverJSON `json:"server"`
	// Standby is the standby's copy of the slot; only on a standby.
	Standby *standbyJSON `json:"standby,omitempty"`
	// Destination is the JetStream stream's state; only with --nats-url.
	Destination *destinationJSON `json:"destination,omitempty"`
}

type serverJSON struct {
	Role    string `json:"role"` // "primary" or "standby"
	Version int    `json:"version_num"`
	// WALLSN is the server's WAL position that lag_bytes and
	// retained_wal_bytes are measured from: pg_current_wal_lsn() on a
	// primary, pg_last_wal_replay_lsn() on a standby.
	WALLSN string `json:"wal_lsn,omitempty"`
}

// standbyJSON is, on a standby, its copy of the slot (PostgreSQL 17+ slot
// synchronisation) and how far it trails what the standby replayed.
type standbyJSON struct {
	ReplayLSN string `json:"replay_lsn,omitempty"`
	// Copy is "synced" (a promotion keeps the slot), "missing", "syncing"
	// (temporary, not persisted yet), "not_synced" (a slot of this name
	// not synced from the primary), "invalidated" or "unsupported"
	// (PostgreSQL 16 and earlier keep no copy).
	Copy string `json:"slot_copy"`
	// Synced is Copy == "synced".
	Synced            bool   `json:"synced"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
	// BehindReplayBytes is replay_lsn minus confirmed_flush_lsn: WAL this
	// standby has that the copy has not confirmed. After a promotion the
	// agent resumes from the copy's position; the read-back absorbs what it
	// had delivered already.
	BehindReplayBytes *int64 `json:"behind_replay_bytes"`
	// SchemaCurrent says the replicated pgaudit_cdc schema is up to date;
	// when not, capture, watches and dead letters are not read.
	SchemaCurrent bool `json:"schema_current"`
}

// captureJSON is capture continuity: the recorded generation, and a gap
// (pending, or detectable now but not yet recorded by the agent).
type captureJSON struct {
	Recorded   bool   `json:"recorded"`
	SystemID   string `json:"system_identifier,omitempty"`
	Timeline   int32  `json:"timeline,omitempty"`
	Generation int    `json:"generation"`
	StartLSN   string `json:"start_lsn,omitempty"`
	// Verdict is capture.Assess's; empty on a standby, where continuity is
	// not assessed (it is the primary's).
	Verdict    string             `json:"verdict"`
	GapReason  string             `json:"gap_reason,omitempty"`
	GapDetail  string             `json:"gap_detail,omitempty"`
	PendingGap *capture.GapRecord `json:"pending_gap"`
	// TimelineMoved: the server is on another timeline than capture, with
	// a failover slot; run compares the audit trail with the new history
	// (a fork is a gap) and records the move.
	TimelineMoved bool `json:"timeline_moved,omitempty"`
}

// gapExit is status's error when capture has a hole: exit code ExitGap.
func (st *Status) gapExit() error {
	switch {
	case st.Capture.PendingGap != nil:
		return &ExitError{Code: ExitGap, Err: &capture.GapError{Gap: *st.Capture.PendingGap}}
	case st.Capture.Verdict == capture.Gap.String():
		return &ExitError{Code: ExitGap, Err: fmt.Errorf("capture gap (%s): %s; start `pgaudit-cdc run` to record it, then accept it with --accept-gap", st.Capture.GapReason, st.Capture.GapDetail)}
	}
	return nil
}

type watchJSON struct {
	Table  string    `json:"table"`
	Kind   string    `json:"kind"`
	Source string    `json:"source"`
	Since  time.Time `json:"since"`
}

func newStatusCmd(o *options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Show slot, publication, confirmed LSN, lag, retained WAL, watches and dead letters",
		Example: "  pgaudit-cdc status\n  pgaudit-cdc status --json | jq .slot.lag_bytes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				st, err := readStatus(cmd.Context(), conn, o)
				if err != nil {
					return err
				}
				if o.nats.urls != "" {
					st.Destination = natsStatus(cmd.Context(), o)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if err := enc.Encode(st); err != nil {
						return err
					}
					return st.gapExit()
				}
				if err := printStatus(cmd.OutOrStdout(), st); err != nil {
					return fmt.Errorf("writing the status: %w", err)
				}
				return st.gapExit()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func readStatus(ctx context.Context, conn *pgx.Conn, o *options) (*Status, error) {
	st := &Status{}
	st.Slot.Name, st.Publication.Name = o.slot, o.publication
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('server_version_num')::int`).Scan(&st.Slot.OnStandby, &st.Server.Version); err != nil {
		return nil, fmt.Errorf("reading the server's state: %w", err)
	}
	st.Server.Role = "primary"
	schemaCurrent := true
	if st.Slot.OnStandby {
		// A standby is read-only (CREATE TABLE IF NOT EXISTS fails with
		// SQLSTATE 25006): read what replication brought, write nothing.
		st.Server.Role = "standby"
		var err error
		if schemaCurrent, err = migrations.UpToDate(ctx, conn); err != nil {
			return nil, err
		}
	} else if _, err := migrations.Apply(ctx, conn); err != nil {
		return nil, err
	}
	if err := st.readSlot(ctx, conn, o.slot, schemaCurrent); err != nil {
		return nil, err
	}
	err := conn.QueryRow(ctx, `SELECT true, (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname
			AND t.schemaname <> 'pgaudit_cdc')
		FROM pg_publication p WHERE p.pubname = $1`, o.publication).Scan(&st.Publication.Exists, &st.Publication.Tables)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("reading the publication: %w", err)
	}
	st.Watches = []watchJSON{}
	if !schemaCurrent {
		return st, nil
	}
	if err := st.readCapture(ctx, conn, o.slot); err != nil {
		return nil, err
	}
	if err := st.readRegistry(ctx, conn, o.slot); err != nil {
		return nil, err
	}
	return st, nil
}

// readSlot reads the slot, the server's position and, on a standby, its
// copy of the slot.
func (st *Status) readSlot(ctx context.Context, conn *pgx.Conn, slotName string, schemaCurrent bool) error {
	slot, err := replication.LookupSlot(ctx, conn, slotName)
	if err != nil {
		return err
	}
	var current, addr *string
	if err := conn.QueryRow(ctx, `SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
			(SELECT host(client_addr) FROM pg_stat_replication WHERE pid = $1)`, slot.ActivePID).Scan(&current, &addr); err != nil {
		return fmt.Errorf("reading the server's position: %w", err)
	}
	if st.Slot.OnStandby {
		c, err := preflight.ReadStandbyCopy(ctx, conn, slotName)
		if err != nil {
			return err
		}
		// One snapshot for the copy and the replay position.
		slot = c.Slot
		current = nil
		if c.ReplayLSN != 0 {
			s := c.ReplayLSN.String()
			current = &s
		}
		sb := &standbyJSON{Copy: copyState(st.Server.Version, c), ConfirmedFlushLSN: lsnText(c.Slot.ConfirmedFlushLSN), SchemaCurrent: schemaCurrent}
		sb.Synced = sb.Copy == "synced"
		if current != nil {
			sb.ReplayLSN = *current
		}
		if c.Slot.Exists {
			sb.BehindReplayBytes = c.BehindReplayBytes
		}
		st.Standby = sb
	}
	if current != nil {
		st.Server.WALLSN = *current
	}
	st.Slot.Exists, st.Slot.AgentConnected, st.Slot.WALStatus = slot.Exists, slot.Active, slot.WALStatus
	st.Slot.Failover, st.Slot.Synced = slot.Failover, slot.Synced
	if slot.ActivePID != 0 {
		pid := slot.ActivePID
		st.Slot.ActivePID = &pid
	}
	st.Slot.ConfirmedFlushLSN, st.Slot.RestartLSN = lsnText(slot.ConfirmedFlushLSN), lsnText(slot.RestartLSN)
	if slot.Exists && current != nil {
		if cur, err := pgoutput.ParseLSN(*current); err == nil {
			behind := func(l pgoutput.LSN) *int64 {
				if l == 0 {
					return nil
				}
				// Never negative: on a standby a copy's position can pass
				// the replayed WAL while replay lags what was flushed.
				d := max(int64(cur)-int64(l), 0)
				return &d
			}
			st.Slot.LagBytes, st.Slot.RetainedWALBytes = behind(slot.ConfirmedFlushLSN), behind(slot.RestartLSN)
		}
	}
	if slot.Exists {
		if st.Slot.Decoding, err = readDecoding(ctx, conn, slotName); err != nil {
			return err
		}
	}
	if addr != nil {
		st.Slot.AgentAddress = *addr
	} else if st.Slot.AgentConnected {
		st.Slot.AgentAddress = "local socket"
	}
	return nil
}

// readCapture reads whether capture is continuous, or what gap is pending.
func (st *Status) readCapture(ctx context.Context, conn *pgx.Conn, slot string) error {
	var a capture.Assessment
	var pending *capture.GapRecord
	var err error
	if st.Slot.OnStandby {
		// Continuity is the primary's to assess (capture.Check reads
		// pgaudit_cdc.slot_progress, an unlogged table a standby cannot
		// read); a pending gap is replicated, and shown.
		pending, err = capture.PendingGap(ctx, conn, slot)
	} else {
		a, pending, err = capture.Check(ctx, conn, slot)
	}
	if err != nil {
		return err
	}
	state, err := capture.LoadState(ctx, conn, slot)
	if err != nil {
		return err
	}
	st.Capture = captureJSON{Recorded: state.Known, Generation: state.Generation, PendingGap: pending}
	if !st.Slot.OnStandby {
		st.Capture.Verdict = a.Verdict.String()
	}
	if state.Known {
		st.Capture.SystemID, st.Capture.Timeline, st.Capture.StartLSN = state.SystemID, state.Timeline, state.StartLSN.String()
	}
	if a.Verdict == capture.Gap {
		st.Capture.GapReason, st.Capture.GapDetail = a.Reason, a.Detail
	}
	st.Capture.TimelineMoved = a.TimelineMoved && !st.Slot.OnStandby
	return nil
}

// readRegistry reads the watches, dead letters, trail and pending backfills.
func (st *Status) readRegistry(ctx context.Context, conn *pgx.Conn, slot string) error {
	entries, err := watches.Load(ctx, conn, false)
	if err != nil {
		return err
	}
	for _, e := range entries {
		st.Watches = append(st.Watches, watchJSON{Table: e.Table, Kind: e.Kind, Source: e.Source, Since: e.CreatedAt})
	}
	if st.DeadLetters, err = deadletters.New(conn, slot).Count(ctx); err != nil {
		return err
	}
	if st.Trail, err = readTrail(ctx, conn, slot); err != nil {
		return err
	}
	if st.Backfills, err = backfill.ListPending(ctx, conn, slot); err != nil {
		return err
	}
	if st.Backfills == nil {
		st.Backfills = []backfill.Pending{}
	}
	return nil
}

// trailJSON is the authenticated trail's state in status.
type trailJSON struct {
	// Keys are the signing keys recorded for the trail, oldest first (none:
	// the agent never ran signed).
	Keys []string `json:"keys"`
	// LastSeal is the newest seal the database anchored.
	LastSeal *sealJSON `json:"last_seal,omitempty"`
}

type sealJSON struct {
	Seq        uint64    `json:"seq"`
	ThroughKey string    `json:"through_key"`
	Events     uint64    `json:"events_sealed"`
	RecordedAt time.Time `json:"recorded_at"`
}

// readTrail reads the trail's keys and anchor.
func readTrail(ctx context.Context, conn *pgx.Conn, slot string) (trailJSON, error) {
	t := trailJSON{Keys: []string{}}
	keys, err := capture.SigningKeys(ctx, conn, slot)
	if err != nil {
		return t, err
	}
	for _, k := range keys {
		t.Keys = append(t.Keys, k.Fingerprint)
	}
	a, ok, err := capture.LoadAnchor(ctx, conn, slot)
	if err != nil || !ok {
		return t, err
	}
	t.LastSeal = &sealJSON{Seq: a.Seq, ThroughKey: a.ToKey, Events: a.Total, RecordedAt: a.RecordedAt}
	return t, nil
}

func lsnText(l pgoutput.LSN) string {
	if l == 0 {
		return ""
	}
	return l.String()
}

// copyState names the state of a standby's copy of the slot.
func copyState(version int, c preflight.StandbyCopy) string {
	switch {
	case !c.Slot.Exists && version < 170000:
		return "unsupported"
	case !c.Slot.Exists:
		return "missing"
	case c.Slot.Invalidated():
		return "invalidated"
	case !c.Slot.Synced:
		return "not_synced"
	case c.Temporary:
		return "syncing"
	default:
		return "synced"
	}
}

// decodingJSON is the server's decoding statistics of the slot, since they
// were last reset.
type decodingJSON struct {
	StreamedTransactions int64 `json:"streamed_transactions"`
	StreamedBytes        int64 `json:"streamed_bytes"`
	SpilledTransactions  int64 `json:"server_spilled_transactions"`
	SpilledBytes         int64 `json:"server_spilled_bytes"`
}

// readDecoding reads the slot's row of pg_stat_replication_slots (none
// until the slot decoded something).
func readDecoding(ctx context.Context, conn *pgx.Conn, slot string) (*decodingJSON, error) {
	st, ok, err := replication.LookupDecodingStats(ctx, conn, slot)
	if err != nil || !ok {
		return nil, err
	}
	return &decodingJSON{StreamedTransactions: st.StreamTxns, StreamedBytes: st.StreamBytes,
		SpilledTransactions: st.SpillTxns, SpilledBytes: st.SpillBytes}, nil
}

// printSlot prints the slot's lines of status: its holder, positions and
// failover state, or the standby's copy of it.
func printSlot(tw io.Writer, st *Status) {
	switch {
	case st.Standby != nil:
		printStandby(tw, st)
	case !st.Slot.Exists && st.Capture.Verdict == capture.Gap.String():
		fmt.Fprintf(tw, "slot\t%s: MISSING although capture started (see capture below)\n", st.Slot.Name)
	case !st.Slot.Exists:
		fmt.Fprintf(tw, "slot\t%s (not created yet: run pgaudit-cdc watch)\n", st.Slot.Name)
	default:
		agent := "no agent connected"
		if st.Slot.AgentConnected {
			agent = fmt.Sprintf("agent connected (PID %d, %s)", derefInt32(st.Slot.ActivePID), st.Slot.AgentAddress)
		}
		fmt.Fprintf(tw, "slot\t%s: %s\n", st.Slot.Name, agent)
		fmt.Fprintf(tw, "confirmed LSN\t%s\n", st.Slot.ConfirmedFlushLSN)
		fmt.Fprintf(tw, "lag\t%s behind the server's WAL\n", humanBytes(st.Slot.LagBytes))
		fmt.Fprintf(tw, "retained WAL\t%s (wal_status %s)\n", humanBytes(st.Slot.RetainedWALBytes), st.Slot.WALStatus)
		switch {
		case st.Slot.OnStandby && st.Slot.Synced:
			fmt.Fprintf(tw, "failover\tthis is a standby; its copy of the slot is synced (confirmed %s)\n", st.Slot.ConfirmedFlushLSN)
		case st.Slot.OnStandby:
			fmt.Fprintf(tw, "failover\tthis is a standby; its copy of the slot is NOT synced: a promotion now loses the slot (a GAP)\n")
		case st.Slot.Failover:
			fmt.Fprintf(tw, "failover\ta failover slot: standbys that sync it keep it across a promotion\n")
		}
		if d := st.Slot.Decoding; d != nil {
			fmt.Fprintf(tw, "large transactions\t%d streamed in progress to the agent (%s); %d spilled to the server's disk (%s)\n",
				d.StreamedTransactions, humanBytes(&d.StreamedBytes), d.SpilledTransactions, humanBytes(&d.SpilledBytes))
		}
	}
}

func printStatus(w io.Writer, st *Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	printSlot(tw, st)
	if d := st.Destination; d != nil {
		switch {
		case d.Error != "":
			fmt.Fprintf(tw, "destination	JetStream stream %s: %s\n", d.Stream, d.Error)
		case !d.Exists:
			fmt.Fprintf(tw, "destination	JetStream stream %s: not created yet (run creates it)\n", d.Stream)
		default:
			fmt.Fprintf(tw, "destination	JetStream stream %s (subject %s): %d messages, last sequence %d, %d replicas, leader %s\n",
				d.Stream, d.Subject, d.Messages, d.LastSeq, d.Replicas, d.Leader)
		}
	}
	pub := "missing"
	if st.Publication.Exists {
		pub = fmt.Sprintf("%d tables", st.Publication.Tables)
	}
	fmt.Fprintf(tw, "publication\t%s: %s\n", st.Publication.Name, pub)
	switch {
	case st.Capture.PendingGap != nil:
		g := st.Capture.PendingGap
		fmt.Fprintf(tw, "capture\tGAP #%d PENDING (%s, detected %s): %s\n", g.ID, g.Reason, g.DetectedAt.UTC().Format(time.RFC3339), g.Detail)
		fmt.Fprintf(tw, "\tcapture is stopped; fix: pgaudit-cdc run --accept-gap=%d, then pgaudit-cdc backfill TABLE for: %s\n", g.ID, strings.Join(g.Tables, ", "))
	case st.Capture.Verdict == capture.Gap.String():
		fmt.Fprintf(tw, "capture\tGAP (%s): %s\n", st.Capture.GapReason, st.Capture.GapDetail)
		fmt.Fprintf(tw, "\tthe agent records it at its next start and stops; then accept it with pgaudit-cdc run --accept-gap\n")
	case st.Standby != nil && !st.Standby.SchemaCurrent:
		fmt.Fprintf(tw, "registry\tthe pgaudit_cdc schema here is missing or older than this pgaudit-cdc: capture, watches and dead letters are not shown (the standby gets them from the primary once watch or run has set them up there)\n")
	case st.Standby != nil && st.Capture.Recorded:
		fmt.Fprintf(tw, "capture\trecorded on the primary since %s (generation %d, timeline %d); continuity is assessed on the primary\n", st.Capture.StartLSN, st.Capture.Generation, st.Capture.Timeline)
	case st.Capture.TimelineMoved:
		fmt.Fprintf(tw, "capture\tthe server is on a new timeline, capture was on %d: the failover slot continues, but whether the audit trail holds events beyond the promotion point is checked by the next `pgaudit-cdc run` with a spine (a fork is a gap)\n", st.Capture.Timeline)
	case st.Capture.Recorded:
		fmt.Fprintf(tw, "capture\tcontinuous since %s (generation %d, timeline %d)\n", st.Capture.StartLSN, st.Capture.Generation, st.Capture.Timeline)
	}
	if st.Standby == nil || st.Standby.SchemaCurrent {
		fmt.Fprintf(tw, "dead letters\t%d\n", st.DeadLetters)
		for _, b := range st.Backfills {
			switch b.State() {
			case "delivering":
				fmt.Fprintf(tw, "backfill\tbackfill %d of %s: %d rows written, not all delivered yet (the agent delivers them)\n", b.ID, b.Table, b.Rows)
			default:
				fmt.Fprintf(tw, "backfill\tbackfill %d of %s: interrupted after %d rows; run pgaudit-cdc backfill %s to finish it\n", b.ID, b.Table, b.Rows, b.Table)
			}
		}
		switch {
		case len(st.Trail.Keys) == 0:
			fmt.Fprintf(tw, "trail\tunsigned: no signing key recorded (run --signing-key-file)\n")
		case st.Trail.LastSeal == nil:
			fmt.Fprintf(tw, "trail\tsigned by %s, no seal yet\n", st.Trail.Keys[len(st.Trail.Keys)-1])
		default:
			ls := st.Trail.LastSeal
			fmt.Fprintf(tw, "trail\tsigned by %s; seal %d covers %d events, through %s (recorded %s)\n",
				st.Trail.Keys[len(st.Trail.Keys)-1], ls.Seq, ls.Events, ls.ThroughKey, ls.RecordedAt.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "watches\t%d\n", len(st.Watches))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Watches) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TABLE\tKIND\tSOURCE\tSINCE")
		for _, e := range st.Watches {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Table, e.Kind, e.Source, e.Since.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return nil
}

// printStandby prints what status sees on a standby: that it is one, and
// its copy of the slot.
func printStandby(tw io.Writer, st *Status) {
	sb := st.Standby
	replayed := sb.ReplayLSN
	if replayed == "" {
		replayed = "unknown"
	}
	fmt.Fprintf(tw, "server\tSTANDBY (in recovery, read-only), replayed up to %s: the agent streams from the primary; below is this standby's copy of the slot\n", replayed)
	fmt.Fprintf(tw, "slot\t%s (the standby's copy)\n", st.Slot.Name)
	switch sb.Copy {
	case "synced":
		fmt.Fprintf(tw, "synced\tyes: a promotion keeps the slot, and the agent continues from the copy's position\n")
	case "syncing":
		fmt.Fprintf(tw, "synced\tno, not yet: the copy is being created (temporary until the primary's slot has passed what this standby replayed); a promotion now loses the slot (a GAP)\n")
	case "not_synced":
		fmt.Fprintf(tw, "synced\tno: a slot of this name exists here but is not synced from the primary (see pgaudit-cdc doctor)\n")
	case "invalidated":
		fmt.Fprintf(tw, "synced\tno: the copy is invalidated (wal_status %s); a promotion now loses the slot (a GAP)\n", st.Slot.WALStatus)
	case "unsupported":
		fmt.Fprintf(tw, "synced\tno: PostgreSQL %d keeps no copy of a logical slot on a standby; a promotion loses the slot (a GAP)\n", st.Server.Version/10000)
	default:
		fmt.Fprintf(tw, "synced\tno: no copy of the slot on this standby; a promotion now loses the slot (a GAP); pgaudit-cdc doctor here names what is missing\n")
	}
	if st.Slot.Exists {
		fmt.Fprintf(tw, "confirmed LSN\t%s (the copy's confirmed_flush_lsn)\n", st.Slot.ConfirmedFlushLSN)
		fmt.Fprintf(tw, "copy lag\t%s behind this standby's replayed WAL (%s): after a promotion the agent resumes from the copy's position, and the read-back absorbs what it had delivered already\n", humanBytes(sb.BehindReplayBytes), replayed)
		fmt.Fprintf(tw, "retained WAL\t%s (wal_status %s)\n", humanBytes(st.Slot.RetainedWALBytes), st.Slot.WALStatus)
	}
}

func humanBytes(p *int64) string {
	if p == nil {
		return "unknown"
	}
	v := float64(*p)
	for _, unit := range []string{"B", "kB", "MB", "GB"} {
		if v < 1024 || unit == "GB" {
			if unit == "B" {
				return fmt.Sprintf("%d B", *p)
			}
			return fmt.Sprintf("%.1f %s", v, unit)
		}
		v /= 1024
	}
	return ""
}

func derefInt32(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

func newDoctorCmd(o *options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that the database (and spine) can run pgaudit-cdc; each failure names its fix",
		Example: `  pgaudit-cdc doctor
  AUDIT_STREAM_URL=http://audit-stream:8093 pgaudit-cdc doctor --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				spine, err := o.spineClient(nil, publish.Hooks{})
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				defer cancel()
				rs := preflight.Run(ctx, conn, preflight.Options{Slot: o.slot, Publication: o.publication, Spine: spine})
				if o.nats.urls != "" {
					rs = append(rs, natsChecks(ctx, o)...)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if err := enc.Encode(rs); err != nil {
						return err
					}
				} else {
					printChecks(cmd.OutOrStdout(), rs)
				}
				if preflight.Failed(rs) {
					return &ExitError{Code: 1, Err: fmt.Errorf("preflight checks failed")}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printChecks(w io.Writer, rs []preflight.Result) {
	for _, r := range rs {
		mark := map[preflight.Status]string{preflight.OK: "ok  ", preflight.Warn: "WARN", preflight.Fail: "FAIL"}[r.Status]
		fmt.Fprintf(w, "%s  %s: %s\n", mark, r.Name, r.Detail)
		if r.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", r.Fix)
		}
	}
}

// SetupSQL returns the statements creating a least-privilege role for
// pgaudit-cdc in database db, able to watch tables owned by tableOwner, and,
// when maintenance is set, the grants letting that role skip row events
// (pgaudit_cdc.skip) and nothing else: row security on pgaudit_cdc.control
// (migrations/0009_control_row_security.sql) lets it insert skip rows only,
// so backfill chunks and checkpoints stay with the agent's role, the
// schema's owner.
func SetupSQL(role, db, tableOwner, maintenance string) string {
	id := ident.SQL
	var b strings.Builder
	fmt.Fprintf(&b, `-- Least-privilege role for pgaudit-cdc. Run as a superuser (or your cloud's admin role).

-- 1. Log in and stream logical replication: REPLICATION lets the role create its slot
--    and read the WAL through it; it grants no access to table data by SQL.
--    (Amazon RDS/Aurora: CREATE ROLE ... LOGIN; then GRANT rds_replication TO the role.)
CREATE ROLE %[1]s WITH LOGIN REPLICATION PASSWORD 'change-me';

-- 2. Connect, and create its own schema (pgaudit_cdc: watch registry, dead letters)
--    and the publication in this database.
GRANT CONNECT, CREATE ON DATABASE %[2]s TO %[1]s;

-- 3. Adding a table to a publication and setting REPLICA IDENTITY FULL need the
--    table owner's rights: membership in the role that owns the watched tables.
GRANT %[3]s TO %[1]s;

-- 4. Optional, superuser only, AFTER the first pgaudit-cdc watch (which creates the
--    functions): in the DDL's own transaction, add tables created in (or moved into)
--    watched schemas to the publication and give them and new partitions of watched
--    tables REPLICA IDENTITY FULL, follow renames, and end the watch of a dropped table
--    with a DROP event. Without them the agent does it within 15 s: a new table's changes
--    before then are not captured, and UPDATE/DELETE events carry the key only.
%[4]s;
`, id(role), id(db), id(tableOwner), "-- "+strings.ReplaceAll(watches.EventTriggerSQL, "\n", "\n-- "))
	fmt.Fprintf(&b, `
-- 5. Control messages are authenticated by PostgreSQL's privileges: skipping row
--    events (pgaudit_cdc.skip), backfill chunks and checkpoints need a row in
--    pgaudit_cdc.control, which only %[1]s may write. No application role should.
--    A maintenance role granted below may write skip rows only (row security).
`, id(role))
	if maintenance != "" {
		fmt.Fprintf(&b, `--    A maintenance role that may run bulk jobs with pgaudit_cdc.skip('reason'),
--    AFTER the first pgaudit-cdc watch (which creates the schema), run as %[2]s:
GRANT USAGE ON SCHEMA pgaudit_cdc TO %[1]s;
GRANT INSERT ON pgaudit_cdc.control TO %[1]s;
GRANT USAGE ON SEQUENCE pgaudit_cdc.control_id_seq TO %[1]s;
GRANT EXECUTE ON FUNCTION pgaudit_cdc.skip(text) TO %[1]s;
`, id(maintenance), id(role))
	} else {
		b.WriteString("--    To let a maintenance role skip row events, print this again with --maintenance-role NAME.\n")
	}
	return b.String()
}

func newSetupCmd(o *options) *cobra.Command {
	var printSQL bool
	var role, db, owner, maintenance string
	cmd := &cobra.Command{
		Use:   "setup --print-sql",
		Short: "Print the SQL creating a least-privilege role for pgaudit-cdc",
		Example: `  pgaudit-cdc setup --print-sql --role pgaudit_cdc --database app --table-owner app_owner
  pgaudit-cdc setup --print-sql | psql "$ADMIN_DATABASE_URL"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !printSQL {
				return &ExitError{Code: 2, Err: fmt.Errorf("setup only prints SQL for you to review and run: pass --print-sql")}
			}
			if db == "" && o.databaseURL != "" {
				if cfg, err := pgx.ParseConfig(o.databaseURL); err == nil {
					db = cfg.Database
				}
			}
			if db == "" {
				db = "app"
			}
			fmt.Fprint(cmd.OutOrStdout(), SetupSQL(role, db, owner, maintenance))
			return nil
		},
	}
	cmd.Flags().BoolVar(&printSQL, "print-sql", false, "print the SQL (required)")
	cmd.Flags().StringVar(&role, "role", "pgaudit_cdc", "name of the role to create")
	cmd.Flags().StringVar(&db, "database", "", "database to audit (default: the one in --database-url)")
	cmd.Flags().StringVar(&owner, "table-owner", "app_owner", "role that owns the tables to watch")
	cmd.Flags().StringVar(&maintenance, "maintenance-role", "", "role allowed to skip row events with pgaudit_cdc.skip (row security on pgaudit_cdc.control lets it write skip rows only)")
	return cmd
}
