// Package agent wires the pipeline: a replication session feeds the decoder,
// whose events a publisher delivers in order; the LSN confirmed to
// PostgreSQL follows only what the sink accepted.
//
// Two goroutines per session. The reader owns the replication connection, the
// catalog connection and the decoder; it sends standby status updates, also
// while it waits for the publisher (back-pressure), so the server never times
// the session out. The publisher owns the sink and the dead-letter
// connection; it accepts the end of each transaction once its last event is
// settled. They share the confirm rule (confirm.Tracker: the publisher
// accepts, the reader records the progress and confirms, never beyond
// either), the count of bytes handed over but not yet delivered (inflight,
// the reader's back-pressure) and a freed signal that wakes the reader when
// the publisher finished a hand-over.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/backoff"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/catalog"
	"github.com/pgaudit-cdc/pgaudit-cdc/confirm"
	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/mapped"
	"github.com/pgaudit-cdc/pgaudit-cdc/metrics"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/spool"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Config configures an Agent.
type Config struct {
	DatabaseURL string
	Slot        string
	Publication string
	// Sink receives the events. Spine, when set, is the same sink seen as
	// the audit-stream client: it enables read-back de-duplication, dead
	// letters and pipelined delivery. Leave it nil (not a nil pointer) for
	// a sink that is not the spine.
	Sink  publish.Sink
	Spine Spine
	// StatusInterval is how often the confirmed LSN is reported (default 10s).
	StatusInterval time.Duration
	// ShutdownGrace is how long buffered events may still be delivered after
	// a stop was asked for (default 5s).
	ShutdownGrace time.Duration
	// HousekeepingInterval is how often the maintenance round runs when
	// nothing asks for one sooner (default 15s): slot statistics, dropped
	// and renamed tables, weakened replica identities, unlogged partitions
	// and schema-watch membership without the event triggers.
	HousekeepingInterval time.Duration
	// HeldCheckInterval is how often, at most, a seal is preceded by
	// reading the last delivered events back by event_id (default 5s),
	// which catches a spine that lost its history while other producers'
	// events hid it from the event_ids of the agent's appends. Each check
	// costs a round trip to the spine before the seal is recorded.
	HeldCheckInterval time.Duration
	// AcceptGap is the operator's consent to continue past a capture gap:
	// "" (none: Run returns a *capture.GapError), capture.AcceptAny, or the
	// gap's ID. Accepting records one GAP event and starts a new slot.
	AcceptGap string
	// AcceptedBy says who consented (recorded in the GAP event).
	AcceptedBy string
	// MaxBufferedBytes bounds the envelopes decoded but not yet delivered
	// (default 64 MiB; one larger batch is always let through).
	MaxBufferedBytes int64
	// Signer signs the trail (package trail): seals over the delivered
	// events, every SealEvents events or SealInterval (defaults 10000 and
	// 250ms), and after SealIdle (100ms) without new work. Nil runs unsigned,
	// which must be asked for (Unsigned).
	Signer       *trail.Key
	Unsigned     bool
	SealEvents   int
	SealInterval time.Duration
	SealIdle     time.Duration
	// Spill bounds the agent's own buffer of the transactions PostgreSQL
	// streams while they are in progress (PostgreSQL 14+, package spool):
	// memory, then files in Spill.Dir (default: a pgaudit-cdc directory in
	// the system's temporary directory). NoStreaming asks for whole
	// transactions instead (protocol 1), which the server spills to its
	// own disk when they outgrow logical_decoding_work_mem.
	Spill       spool.Config
	NoStreaming bool
	// AnchorFile, when set, is an append-only file that receives each
	// seal's head as well (a JSON line), besides the audited database.
	AnchorFile string
	Logger     *slog.Logger
	Metrics    *metrics.Metrics
	Ready      *metrics.Readiness
}

// Spine is what the agent needs of the audit-stream client beyond a Sink:
// whose events are its own (SetIdentity, at each session), and what is
// handled otherwise (dead letters). *publish.Client implements it.
type Spine interface {
	publish.Sink
	SetIdentity(systemID, slot string)
	MarkKeyHandled(key string)
	// MarkFor is the high-water mark of what this process saw accepted for
	// systemID and slot (zero for another identity).
	MarkFor(systemID, slot string) envelope.Position
}

// Agent is the long-lived service behind `pgaudit-cdc run`.
type Agent struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics
	// consentResolved: --accept-gap without an ID was narrowed to the gap
	// pending at the first assessment (see resolveConsent).
	consentResolved bool
	// spool holds streamed transactions until their commit; nil with
	// NoStreaming. Used by one session's reader at a time.
	spool *spool.Spool
}

// New validates cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.DatabaseURL == "" {
		return nil, errors.New("no database URL: set --database-url or DATABASE_URL")
	}
	if err := replication.ValidateSlotName(cfg.Slot); err != nil {
		return nil, err
	}
	if err := replication.ValidatePublicationName(cfg.Publication); err != nil {
		return nil, err
	}
	if cfg.Sink == nil {
		return nil, errors.New("BUG: agent.Config.Sink is nil")
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	if cfg.HeldCheckInterval <= 0 {
		cfg.HeldCheckInterval = defaultHeldCheckInterval
	}
	if cfg.HousekeepingInterval <= 0 {
		cfg.HousekeepingInterval = defaultHousekeepingInterval
	}
	if cfg.MaxBufferedBytes <= 0 {
		cfg.MaxBufferedBytes = 64 << 20
	}
	if cfg.Signer == nil && !cfg.Unsigned {
		return nil, errors.New("no signing key: set --signing-key-file (or PGAUDIT_SIGNING_KEY_FILE) to a key made by `pgaudit-cdc keygen`, or run with --unsigned to deliver an unauthenticated trail")
	}
	if cfg.SealEvents <= 0 {
		cfg.SealEvents = defaultSealEvents
	}
	if cfg.SealInterval <= 0 {
		cfg.SealInterval = defaultSealInterval
	}
	if cfg.SealIdle <= 0 {
		cfg.SealIdle = defaultSealIdle
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.Ready == nil {
		cfg.Ready = &metrics.Readiness{}
	}
	if cfg.Spine == nil {
		cfg.Ready.SetSink(true)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, m: cfg.Metrics}
	// The spill directory also takes messages over
	// replication.DivertOver as they arrive, streaming or not.
	if a.cfg.Spill.Dir == "" {
		a.cfg.Spill.Dir = spool.DefaultDir()
	}
	if a.cfg.Spill.MaxDisk <= 0 {
		a.cfg.Spill.MaxDisk = spool.DefaultMaxDisk
	}
	// One cap for both: --spill-max-bytes bounds the directory.
	a.cfg.Spill.Quota = mapped.NewQuota(a.cfg.Spill.MaxDisk)
	var err error
	if cfg.NoStreaming {
		err = spool.CheckDir(a.cfg.Spill.Dir)
	} else {
		a.spool, err = spool.Open(a.cfg.Spill)
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

// ConfigError marks failures only the user can fix (wal_level, privileges, a
// slot of the wrong kind): Run returns them instead of retrying forever.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Run streams until ctx ends (then it returns nil after a clean shutdown) or
// a configuration error makes going on pointless. Connection losses are
// retried with capped exponential backoff; when another instance holds the
// slot, Run waits as a hot standby and takes over when the slot is free.
func (a *Agent) Run(ctx context.Context) error {
	attempt := 0
	standby := false
	for {
		start := time.Now()
		err := a.session(ctx)
		a.cfg.Ready.SetDatabase(false)
		a.m.DatabaseUp.Set(0)
		a.m.SlotActive.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		var cfgErr *ConfigError
		var gapErr *capture.GapError
		if errors.As(err, &cfgErr) || errors.As(err, &gapErr) {
			return err
		}
		if errors.Is(err, spool.ErrFull) {
			a.m.SpillFull.Inc()
			a.log.Error("capture stopped: a transaction streamed in progress, or a message set aside as it arrived, does not fit in the spill directory; nothing past it was confirmed, and capture retries", "err", err)
		}
		var wait time.Duration
		if errors.Is(err, replication.ErrSlotInUse) {
			if !standby {
				a.log.Info("slot is held by another instance; waiting as standby", "slot", a.cfg.Slot, "err", err)
			}
			standby = true
			wait = 2 * time.Second
		} else {
			standby = false
			if time.Since(start) > time.Minute {
				attempt = 0
			}
			wait = backoff.Delay(attempt, 500*time.Millisecond, 30*time.Second)
			attempt++
			a.m.Reconnects.Inc()
			a.log.Warn("replication session ended; reconnecting", "err", err, "wait", wait.Round(time.Millisecond))
		}
		if backoff.Sleep(ctx, wait) != nil {
			return nil
		}
	}
}

// work is one unit handed from the reader to the publisher.
type work struct {
	item decode.Item
	// keepalive, when set, is a server WAL position received while no
	// transaction was open: it may be confirmed once everything before it is.
	keepalive pgoutput.LSN
	size      int64 // bytes of the envelope
}

// session is one replication session, phase by phase: connect and prepare
// the database, settle capture continuity, read what streaming starts from,
// then run the reader and the publisher until the stream ends or ctx does.
func (a *Agent) session(ctx context.Context) error {
	meta, err := connectDB(ctx, a.cfg.DatabaseURL)
	if err != nil {
		return replication.Explain(fmt.Errorf("connecting to the database: %w", err))
	}
	defer meta.Close(context.WithoutCancel(ctx))
	if err := a.prepareDatabase(ctx, meta); err != nil {
		return err
	}
	sess, err := replication.Connect(ctx, a.cfg.DatabaseURL, replication.Divert{Dir: a.cfg.Spill.Dir, Quota: a.cfg.Spill.Quota})
	if err != nil {
		if replication.UserMustFix(err) {
			return &ConfigError{err}
		}
		return err
	}
	defer sess.Close(context.WithoutCancel(ctx))
	// Before anything is read back: requests a session before this one
	// left in flight may still land.
	marks, err := a.predecessor(ctx, meta)
	if err != nil {
		return err
	}
	defer marks.end(ctx)
	keySlot, err := a.ensureCapture(ctx, meta, sess)
	if err != nil {
		return err
	}
	dl, err := a.prepareSpine(ctx, meta, sess.SystemID, keySlot)
	if err != nil {
		return err
	}
	seals, err := a.startTrail(ctx, meta, sess, keySlot, dl)
	if err != nil {
		return err
	}
	start, err := a.startStreaming(ctx, meta, sess, keySlot)
	if err != nil {
		return err
	}
	if err := marks.started(ctx); err != nil {
		return err
	}
	err = a.stream(ctx, a.newReader(meta, sess, keySlot, start), dl, seals)
	if publish.IsHistoryLost(err) {
		return a.lostOnTheWay(context.WithoutCancel(ctx), meta, sess, err)
	}
	return err
}

// prepareDatabase checks the WAL level and brings the schema and the
// publication up to date.
func (a *Agent) prepareDatabase(ctx context.Context, meta *pgx.Conn) error {
	if err := replication.CheckWALLevel(ctx, meta); err != nil {
		if _, wrong := errors.AsType[*replication.WALLevelError](err); wrong {
			return &ConfigError{err}
		}
		return err // a restart or a lost connection: tried again
	}
	if _, err := migrations.Apply(ctx, meta); err != nil {
		return err
	}
	return replication.EnsurePublication(ctx, meta, a.cfg.Publication)
}

// ensureCapture settles capture continuity first: a lost, invalidated or
// advanced slot stops here with a recorded gap instead of streaming a
// history with a hole. It returns the slot name the event keys carry.
func (a *Agent) ensureCapture(ctx context.Context, meta *pgx.Conn, sess *replication.Session) (string, error) {
	opts := capture.Options{Slot: a.cfg.Slot, SystemID: sess.SystemID, Timeline: sess.Timeline, Accept: a.cfg.AcceptGap}
	if _, ok := a.cfg.Sink.(lastDeliveredReader); ok {
		// Only a sink that can say what it holds can settle a timeline
		// move; without one (the stdout sink) it stays unsettled, to be
		// compared by the next run that has a spine.
		opts.Fork = func(ctx context.Context, st capture.State) (switchPoint, delivered pgoutput.LSN, err error) {
			return a.forkPoints(ctx, meta, sess, st)
		}
	}
	capt, err := capture.Ensure(ctx, meta, opts)
	a.resolveConsent(capt)
	if capt.NewGap {
		a.m.GapsDetected.WithLabelValues(capt.Gap.Reason).Inc()
	}
	var gapErr *capture.GapError
	if errors.As(err, &gapErr) {
		a.m.GapPending.Set(1)
		a.log.Error("capture gap: the audit trail has a hole and capture is stopped until an operator accepts it",
			"gap_id", gapErr.Gap.ID, "reason", gapErr.Gap.Reason, "detail", gapErr.Gap.Detail,
			"tables", strings.Join(gapErr.Gap.Tables, ", "),
			"fix", fmt.Sprintf("pgaudit-cdc run --accept-gap=%d, then pgaudit-cdc backfill TABLE for each affected table", gapErr.Gap.ID))
		return "", err
	}
	if err != nil {
		if replication.UserMustFix(err) {
			return "", &ConfigError{err}
		}
		return "", err
	}
	if capt.Assessment.TimelineMoved {
		if opts.Fork != nil {
			a.log.Warn("the server is on a new timeline and the failover slot continues there", "timeline", sess.Timeline)
		} else {
			a.log.Warn("the server is on a new timeline; without a spine to read back, pgaudit-cdc cannot tell whether events it delivered from the old primary lie beyond the promotion point: the next run with a spine compares them",
				"timeline", sess.Timeline)
		}
	}
	if capt.Accepted {
		if err := a.recordGap(ctx, meta, capt); err != nil {
			return "", err
		}
	}
	// Consent covers the gap pending when it was given, once: a later gap
	// of this same process needs a new decision.
	a.cfg.AcceptGap = ""
	a.m.GapPending.Set(0)
	return capture.KeySlot(a.cfg.Slot, capt.State.Generation), nil
}

// resolveConsent narrows --accept-gap without an ID, at the process's first
// assessment of the slot, to the gap pending then: the one an operator could
// have seen. With none pending it is void (logged), so a gap that opens later
// in this process's life needs a new decision.
func (a *Agent) resolveConsent(capt capture.Result) {
	if a.consentResolved || !capt.Assessed {
		return
	}
	a.consentResolved = true
	if a.cfg.AcceptGap != capture.AcceptAny {
		return
	}
	if capt.Pending == nil {
		a.cfg.AcceptGap = ""
		a.log.Warn("--accept-gap was given but no capture gap was pending when the slot was first assessed: the consent is void, and a gap found later needs its own (pgaudit-cdc run --accept-gap=ID)")
		return
	}
	a.cfg.AcceptGap = strconv.FormatInt(capt.Pending.ID, 10)
}

// prepareSpine tells the spine whose events are its own and which of them
// are handled already, as dead letters; it returns the session's dead-letter
// store.
func (a *Agent) prepareSpine(ctx context.Context, meta *pgx.Conn, systemID, keySlot string) (*deadLetters, error) {
	if a.cfg.Spine != nil {
		a.cfg.Spine.SetIdentity(systemID, keySlot)
	}
	dl := newDeadLetters(a.cfg.Slot)
	if a.cfg.Spine != nil {
		keys, err := dl.keys(ctx, meta, envelope.KeyPrefix(systemID, keySlot))
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			a.cfg.Spine.MarkKeyHandled(k)
		}
	}
	return dl, nil
}

// streamStart is what a session reads before it starts streaming.
type streamStart struct {
	watches []watches.Entry
	schemas []watches.SchemaEntry
	// from is the slot's confirmed_flush_lsn, recorded as progress.
	from pgoutput.LSN
	// last is the last event the spine holds.
	last envelope.Position
	// streaming: large transactions come in blocks while in progress
	// (protocol 2), kept in the agent's spool.
	streaming bool
}

// startStreaming loads the watches, records the slot's position as
// progress, reads back the last delivered event and starts streaming.
func (a *Agent) startStreaming(ctx context.Context, meta *pgx.Conn, sess *replication.Session, keySlot string) (streamStart, error) {
	var st streamStart
	var err error
	if st.watches, err = watches.Load(ctx, meta, true); err != nil {
		return st, err
	}
	if st.schemas, err = watches.LoadSchemas(ctx, meta, true); err != nil {
		return st, err
	}
	slot, err := replication.LookupSlot(ctx, meta, a.cfg.Slot)
	if err != nil {
		return st, err
	}
	st.from = slot.ConfirmedFlushLSN
	// The progress record must cover what the slot says before anything is
	// confirmed (see capture.SaveProgress).
	if err := capture.SaveProgress(ctx, meta, a.cfg.Slot, st.from); err != nil {
		return st, err
	}
	// The self-linked stream starts from the last event the spine holds of
	// the transactions before the slot's position, so that the first event
	// replayed names its real predecessor: a replayed event is built exactly
	// as it was delivered (its digest is sealed). Read before streaming
	// starts: the walsender would time out while it is read.
	if st.last, _, _, err = a.lastDelivered(ctx, meta, sess.SystemID, keySlot, st.from); err != nil {
		return st, fmt.Errorf("reading back the last delivered event: %w", err)
	}
	// An event kept as a dead letter is not in the spine, but the event
	// after it named it as its predecessor all the same.
	if a.cfg.Spine != nil {
		dead, err := deadletters.New(meta, a.cfg.Slot).Keys(ctx, envelope.KeyPrefix(sess.SystemID, keySlot))
		if err != nil {
			return st, fmt.Errorf("reading the dead letters: %w", err)
		}
		st.last = predecessor(st.last, dead, sess.SystemID, keySlot, st.from)
	}
	st.streaming = a.spool != nil && sess.CanStream()
	if a.spool != nil {
		a.spool.Reset() // the server streams open transactions again from their start
	}
	if err := sess.Start(ctx, a.cfg.Slot, a.cfg.Publication, st.streaming); err != nil {
		return st, err
	}
	a.m.SlotActive.Set(1)
	a.m.DatabaseUp.Set(1)
	a.cfg.Ready.SetDatabase(true)
	active := 0
	for _, e := range st.watches {
		if e.Active {
			active++
		}
	}
	a.log.Info("streaming", "slot", a.cfg.Slot, "publication", a.cfg.Publication,
		"from", st.from.String(), "system_id", sess.SystemID, "watches", active, "in_progress_streaming", st.streaming)
	return st, nil
}

// predecessor is the position the first event replayed from from names as
// its predecessor: the last one delivered before from, or a later event
// kept as a dead letter (one of deadKeys, of systemID and keySlot) in a
// transaction before from.
func predecessor(delivered envelope.Position, deadKeys []string, systemID, keySlot string, from pgoutput.LSN) envelope.Position {
	for _, k := range deadKeys {
		sys, slot, pos, ok := envelope.ParseKey(k)
		if ok && sys == systemID && slot == keySlot && pos.CommitLSN < from && delivered.Less(pos) {
			delivered = pos
		}
	}
	return delivered
}

// newReader returns the reader of a session that started streaming from
// start, with the confirm rule starting at the slot's position.
func (a *Agent) newReader(meta *pgx.Conn, sess *replication.Session, keySlot string, start streamStart) *reader {
	// Nothing is confirmed early: the publisher accepts, the reader records
	// and confirms (package confirm).
	pos := confirm.New(start.from)
	a.m.ConfirmedLSN.Set(float64(start.from))

	r := &reader{
		a:     a,
		sess:  sess,
		meta:  meta,
		house: newHousekeeper(a),
		stream: decode.NewStream(decode.StreamConfig{
			SystemID:            sess.SystemID,
			Slot:                keySlot,
			RegistrySchema:      migrations.Schema,
			RegistryTable:       migrations.RegistryTable,
			SchemaRegistryTable: migrations.SchemaRegistryTable,
			PartitionTable:      migrations.PartitionTable,
			RewriteTable:        migrations.RewriteTable,
			ControlTable:        migrations.ControlTable,
			Types:               catalog.NewResolver(meta),
		}, watches.Map(start.watches)),
		items:   make(chan batch, 64),
		freed:   make(chan struct{}, 1),
		spare:   make(chan []work, 66),
		confirm: pos,
	}
	if start.streaming {
		r.spool = a.spool
		r.spilled = a.spool.Stats().SpilledBytes
	}
	r.stream.SetSchemaWatches(watches.SchemaMap(start.schemas))
	r.stream.SetPrevious(start.last)
	return r
}

// stream runs the housekeeper, the publisher and the reader until the
// stream ends or ctx does, then sends the final status.
func (a *Agent) stream(ctx context.Context, r *reader, dl *deadLetters, seals *sealing) error {
	houseCtx, houseCancel := context.WithCancel(ctx)
	houseDone := make(chan struct{})
	go func() { defer close(houseDone); r.house.run(houseCtx) }()
	defer func() { houseCancel(); <-houseDone }()

	// The publisher outlives a stop request by the grace period, so that
	// what was already decoded can still be delivered.
	pubCtx, pubCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer pubCancel()
	stopGrace := context.AfterFunc(ctx, func() {
		time.AfterFunc(a.cfg.ShutdownGrace, pubCancel)
	})
	defer stopGrace()
	p := &publisher{a: a, items: r.items, freed: r.freed, spare: r.spare, confirm: r.confirm, inflight: &r.inflight, dl: dl, seals: seals}
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.run(pubCtx) }()
	r.pubDone = pubDone

	readErr := r.run(ctx)
	if ctx.Err() == nil {
		// The stream broke: the slot may already be free for a standby, so
		// nothing buffered may be sent from here any more; it is replayed.
		pubCancel()
	}
	close(r.items)
	var pubErr error
	if r.pubErr != nil {
		pubErr = r.pubErr
	} else {
		pubErr = <-pubDone
	}
	if !publish.IsHistoryLost(pubErr) {
		// Nothing more goes into a spine that lost its history.
		// The publisher has stopped: its accept is this goroutine's now.
		if held := seals.finalSeal(ctx); held != 0 {
			p.accept(held)
		}
	}
	a.finalStatus(ctx, r)
	if ctx.Err() != nil {
		return nil
	}
	if pubErr != nil && !errors.Is(pubErr, context.Canceled) {
		return pubErr
	}
	return readErr
}

// finalStatus records and confirms whatever the publisher accepted, nothing
// more, once the publisher stopped.
func (a *Agent) finalStatus(ctx context.Context, r *reader) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := r.recordProgress(fctx, 0); err != nil {
		a.log.Debug("the final progress could not be recorded; confirming what was recorded", "err", err)
	}
	final := r.confirm.Confirmable()
	if err := r.sess.SendStatus(fctx, final, false); err != nil && ctx.Err() == nil {
		a.log.Debug("final status update failed", "err", err)
	}
	a.log.Info("replication session closed", "confirmed_lsn", final.String())
}
