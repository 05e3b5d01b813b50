package decode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Watch is the registry entry of one watched table: what its events are
// labelled with. Inactive entries are kept as tombstones so that changes
// committed before an unwatch, and replayed after it, are still delivered with
// the labels they had.
type Watch struct {
	Kind   string
	Source string
	Active bool
	// OnColumns, when set, limits UPDATE events to those that change at
	// least one of these columns.
	OnColumns []string
	// KeyIdentity says the watch has a column list, which makes the
	// table's replica identity its primary key on purpose: old rows are
	// key-only by design, not because the identity was weakened.
	KeyIdentity bool
}

func (w Watch) equal(o Watch) bool {
	return w.Kind == o.Kind && w.Source == o.Source && w.Active == o.Active && slices.Equal(w.OnColumns, o.OnColumns) &&
		w.KeyIdentity == o.KeyIdentity
}

// StreamConfig is fixed for the life of a Stream.
type StreamConfig struct {
	// SystemID is the server's system identifier (IDENTIFY_SYSTEM); with Slot
	// it makes idempotency keys unique across databases and agents.
	SystemID string
	Slot     string
	// RegistrySchema and RegistryTable name the watch registry table, whose
	// changes travel through the same publication and update the watches in
	// commit order.
	RegistrySchema string
	RegistryTable  string
	// SchemaRegistryTable names the schema-wide watch table, in
	// RegistrySchema.
	SchemaRegistryTable string
	// ControlTable names the table, in RegistrySchema, whose rows authorise
	// control messages (skip, backfill) in their transaction.
	ControlTable string
	// Types resolves the column types of RELATION messages and backfill
	// chunks (catalog.Resolver in the agent). Nil resolves the built-in
	// types only (pgjson.Builtin) and maps every other type as text.
	Types TypeLookup
}

// TypeLookup maps column type OIDs to their JSON mapping. The stream asks it
// for every column of a RELATION message, and for the columns of a backfill
// chunk, so that it holds the I/O (package catalog reads pg_type) and the
// stream stays pure.
type TypeLookup interface {
	// Resolve returns the mapping of the type oid; nil maps as text.
	Resolve(ctx context.Context, oid uint32) (*pgjson.Type, error)
	// Forget drops what the lookup cached. The stream calls it when a
	// RELATION message arrives: the table, or a type it uses, may have
	// changed.
	Forget()
}

// relation is a RELATION message with its column types resolved.
type relation struct {
	*pgoutput.RelationMessage
	types []*pgjson.Type // one per column; nil maps as text
	name  string         // QualifiedName, made once per RELATION message, not per event
	keys  [][]byte       // per column, its name as a JSON string and ':', made once too
}

// Position orders every change of a slot: the commit LSN of its transaction,
// then its sequence number in that transaction. It is stable across replays.
type Position struct {
	CommitLSN pgoutput.LSN
	Seq       uint32
}

// AppendText writes p as "<commit LSN>:<seq>", e.g. "0/1A2B3C8:5", the form
// of metadata.prev.
func (p Position) AppendText(b []byte) []byte {
	b = p.CommitLSN.AppendText(b)
	b = append(b, ':')
	return strconv.AppendUint(b, uint64(p.Seq), 10)
}

// String is AppendText as a string.
func (p Position) String() string { return string(p.AppendText(nil)) }

// ParsePosition parses the form of Position.String.
func ParsePosition(s string) (Position, bool) {
	lsnText, seqText, ok := strings.Cut(s, ":")
	if !ok {
		return Position{}, false
	}
	hiText, loText, ok := strings.Cut(lsnText, "/")
	if !ok {
		return Position{}, false
	}
	hi, err1 := strconv.ParseUint(hiText, 16, 32)
	lo, err2 := strconv.ParseUint(loText, 16, 32)
	seq, err3 := strconv.ParseUint(seqText, 10, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return Position{}, false
	}
	return Position{CommitLSN: pgoutput.LSN(hi<<32 | lo), Seq: uint32(seq)}, true
}

// Less reports whether p comes before q in commit order.
func (p Position) Less(q Position) bool {
	if p.CommitLSN != q.CommitLSN {
		return p.CommitLSN < q.CommitLSN
	}
	return p.Seq < q.Seq
}

// IsZero reports whether p is the zero position (before everything).
func (p Position) IsZero() bool { return p == Position{} }

const keyPrefix = "pgaudit-cdc:"

// Key is the idempotency key of the change at p: unique across servers
// (system identifier), agents (slot) and changes (position).
func Key(systemID, slot string, p Position) string {
	b := make([]byte, 0, len(keyPrefix)+len(systemID)+len(slot)+30)
	b = append(b, keyPrefix...)
	b = append(b, systemID...)
	b = append(b, ':')
	b = append(b, slot...)
	b = append(b, ':')
	// The commit LSN as 16 upper-case hex digits, without fmt (hot path).
	const hexDigits = "0123456789ABCDEF"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, hexDigits[uint64(p.CommitLSN)>>shift&0xF])
	}
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(p.Seq), 10)
	return string(b)
}

// KeyPrefix is what every key of systemID and slot starts with.
func KeyPrefix(systemID, slot string) string {
	return keyPrefix + systemID + ":" + slot + ":"
}

// ParseKey splits an idempotency key made by Key. ok is false for anything
// else, including keys of other producers.
func ParseKey(key string) (systemID, slot string, p Position, ok bool) {
	rest, found := strings.CutPrefix(key, keyPrefix)
	if !found {
		return "", "", Position{}, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 4 || parts[0] == "" || parts[1] == "" {
		return "", "", Position{}, false
	}
	lsn, err := strconv.ParseUint(parts[2], 16, 64)
	if err != nil {
		return "", "", Position{}, false
	}
	seq, err := strconv.ParseUint(parts[3], 10, 32)
	if err != nil {
		return "", "", Position{}, false
	}
	return parts[0], parts[1], Position{CommitLSN: pgoutput.LSN(lsn), Seq: uint32(seq)}, true
}

// Operation names as they appear in payload.operation.
const (
	OpInsert   = "INSERT"
	OpUpdate   = "UPDATE"
	OpDelete   = "DELETE"
	OpTruncate = "TRUNCATE"
)

// Event is one envelope ready to publish.
type Event struct {
	// Body is the PublishRequest JSON: kind, source, timestamp, payload.
	Body       []byte
	Key        string
	Pos        Position
	LSN        pgoutput.LSN
	Kind       string
	Source     string
	Table      string // as in payload.table
	Operation  string
	CommitTime time.Time
}

// ItemKind tells what an Item carries.
type ItemKind uint8

// Item kinds.
const (
	ItemEvent        ItemKind = iota + 1 // Event is set
	ItemCommit                           // a transaction ended at EndLSN: once every earlier item is delivered, EndLSN may be confirmed
	ItemWatchChanged                     // the registry changed: Table, Watch and Previous say how
	ItemNotice                           // something the operator should know (Notice); nothing to deliver
	// ItemRejectedControl is a control message that no authorising control
	// row came with: it had no effect. Prefix and Notice say what it was.
	ItemRejectedControl
	// ItemReplicaIdentity is a watched table streaming without REPLICA
	// IDENTITY FULL: its old rows are incomplete. TableOID, Table and
	// ReplicaIdentity say which and how.
	ItemReplicaIdentity
)

// Item is one output of Stream.Apply.
type Item struct {
	Kind   ItemKind
	Event  *Event
	EndLSN pgoutput.LSN
	// Watch changes.
	TableOID uint32
	Watch    Watch
	Previous Watch
	Existed  bool
	Schema   string // set for schema-wide watch changes instead of TableOID
	// Notice is a one-line explanation for ItemNotice and
	// ItemRejectedControl.
	Notice string
	// Prefix is the logical message prefix of an ItemRejectedControl.
	Prefix string
	// Table and ReplicaIdentity describe an ItemReplicaIdentity.
	Table           string
	ReplicaIdentity byte
}

// Stream turns parsed pgoutput messages into events. It holds the relation
// cache, the current transaction and the watch registry; it does no I/O.
// A Stream is used by one goroutine.
type Stream struct {
	cfg           StreamConfig
	relations     map[uint32]*relation
	watches       map[uint32]Watch
	schemaWatches map[string]Watch

	inTx       bool
	begin      pgoutput.BeginMessage
	seq        uint32
	timestamp  []byte // commit time, ISO 8601, of the current transaction
	commitTime time.Time

	// Per-transaction capture state (see capture.go).
	annotations    []byte // compact JSON object, or nil
	annotationsErr string
	skip           []byte // the skip marker's content while skipping, else nil
	skipped        []*skipCount
	// backfillAuth are the backfill chunks the transaction's control rows
	// authorised, not yet used.
	backfillAuth []controlRow

	// identity remembers the replica identity last reported per watched
	// relation, so a weakening is reported once.
	identity map[uint32]byte

	// The self-linked stream (see appendMetadata): the position of the
	// previous event, the number of events built in this transaction, and
	// the last of them, held back until it is known whether it is the last.
	prev    Position
	txCount uint32
	held    *Event
}

// SetPrevious tells the stream the position of the last event already
// delivered (read back from the spine at the start of a session), so the
// first event it builds links to it when the replay regenerates nothing
// before it.
func (s *Stream) SetPrevious(p Position) { s.prev = p }

// NewStream returns a Stream that labels events with watches (keyed by table
// OID). The map is copied.
func NewStream(cfg StreamConfig, watches map[uint32]Watch) *Stream {
	w := make(map[uint32]Watch, len(watches))
	for k, v := range watches {
		w[k] = v
	}
	return &Stream{cfg: cfg, relations: map[uint32]*relation{}, watches: w,
		schemaWatches: map[string]Watch{}, identity: map[uint32]byte{}}
}

// SetSchemaWatches replaces the schema-wide watches (keyed by schema name).
func (s *Stream) SetSchemaWatches(watches map[string]Watch) {
	s.schemaWatches = make(map[string]Watch, len(watches))
	for k, v := range watches {
		s.schemaWatches[k] = v
	}
}

// watchFor returns the watch labelling changes of rel: an active per-table
// watch, else a schema-wide one, else a per-table tombstone (replayed changes
// from before an unwatch).
func (s *Stream) watchFor(relID uint32, namespace string) (Watch, bool) {
	w, ok := s.watches[relID]
	if ok && w.Active {
		return w, true
	}
	if sw, sok := s.schemaWatches[namespace]; sok && sw.Active {
		return sw, true
	}
	if ok {
		return w, true
	}
	sw, sok := s.schemaWatches[namespace]
	return sw, sok
}

// InTransaction reports whether a transaction has begun and not yet committed.
func (s *Stream) InTransaction() bool { return s.inTx }

// Watches returns a copy of the current watch registry.
func (s *Stream) Watches() map[uint32]Watch {
	w := make(map[uint32]Watch, len(s.watches))
	for k, v := range s.watches {
		w[k] = v
	}
	return w
}

// ErrProtocol is wrapped by Apply errors caused by a message sequence that
// pgoutput never produces (a change outside a transaction, an unknown
// relation).
var ErrProtocol = errors.New("unexpected pgoutput message sequence")

// Apply feeds one message, received at WAL position lsn, and calls emit for
// each item it yields, in order. Tuple data of m may be reused after Apply
// returns: events own their bytes. ctx bounds the type lookups (see
// StreamConfig.Types), whose errors Apply returns.
func (s *Stream) Apply(ctx context.Context, lsn pgoutput.LSN, m pgoutput.Message, emit func(Item) error) error {
	return s.apply(ctx, lsn, m, func(it Item) error {
		switch it.Kind {
		case ItemEvent:
			// Hold each event until the next one or the commit: only then
			// is it known whether it is the transaction's last.
			held := s.held
			s.held = it.Event
			if held != nil {
				return emit(Item{Kind: ItemEvent, Event: held})
			}
			return nil
		case ItemCommit:
			if held := s.held; held != nil {
				s.held = nil
				markLast(held, s.txCount)
				if err := emit(Item{Kind: ItemEvent, Event: held}); err != nil {
					return err
				}
			}
		}
		return emit(it)
	})
}

// markLast adds the transaction's event count to its last event's metadata,
// which is the innermost object the body closes last.
func markLast(ev *Event, count uint32) {
	b := ev.Body[:len(ev.Body)-3] // "}}}": metadata, payload, envelope
	b = append(b, `,"tx_events":`...)
	b = strconv.AppendUint(b, uint64(count), 10)
	ev.Body = append(b, "}}}"...)
}

func (s *Stream) apply(ctx context.Context, lsn pgoutput.LSN, m pgoutput.Message, emit func(Item) error) error {
	switch m := m.(type) {
	case *pgoutput.BeginMessage:
		if s.inTx {
			return fmt.Errorf("%w: BEGIN of xid %d inside xid %d", ErrProtocol, m.Xid, s.begin.Xid)
		}
		s.inTx, s.begin, s.seq, s.txCount, s.held = true, *m, 0, 0, nil
		s.commitTime = pgoutput.PGTime(m.CommitTime)
		s.timestamp = AppendTimestamp(s.timestamp[:0], s.commitTime)
		s.annotations, s.annotationsErr, s.skip, s.skipped, s.backfillAuth = nil, "", nil, nil, nil
		return nil
	case *pgoutput.CommitMessage:
		if !s.inTx {
			return fmt.Errorf("%w: COMMIT outside a transaction", ErrProtocol)
		}
		if err := s.emitSkipSummaries(lsn, emit); err != nil {
			return err
		}
		s.inTx = false
		return emit(Item{Kind: ItemCommit, EndLSN: m.EndLSN})
	case *pgoutput.RelationMessage:
		rel, err := s.resolveRelation(ctx, m)
		if err != nil {
			return err
		}
		s.relations[m.ID] = rel
		return s.checkReplicaIdentity(m, emit)
	case *pgoutput.TypeMessage, *pgoutput.OriginMessage:
		return nil
	case *pgoutput.LogicalMessage:
		return s.logicalMessage(ctx, lsn, m, emit)
	case *pgoutput.InsertMessage:
		return s.change(lsn, m.RelationID, OpInsert, 0, nil, m.New, emit)
	case *pgoutput.UpdateMessage:
		return s.change(lsn, m.RelationID, OpUpdate, m.OldKind, m.Old, m.New, emit)
	case *pgoutput.DeleteMessage:
		return s.change(lsn, m.RelationID, OpDelete, m.OldKind, m.Old, nil, emit)
	case *pgoutput.TruncateMessage:
		return s.truncate(lsn, m, emit)
	default:
		return fmt.Errorf("%w: message type %q", ErrProtocol, m.Type())
	}
}

// resolveRelation looks up the column types of a RELATION message, afresh.
func (s *Stream) resolveRelation(ctx context.Context, m *pgoutput.RelationMessage) (*relation, error) {
	if s.cfg.Types != nil {
		s.cfg.Types.Forget()
	}
	rel := &relation{RelationMessage: m, types: make([]*pgjson.Type, len(m.Columns)), name: QualifiedName(m.Namespace, m.Name),
		keys: make([][]byte, len(m.Columns))}
	for i, c := range m.Columns {
		rel.keys[i] = append(pgjson.AppendString(nil, []byte(c.Name)), ':')
		t, err := s.lookupType(ctx, c.TypeOID)
		if err != nil {
			return nil, fmt.Errorf("resolving the type of %s.%s: %w", QualifiedName(m.Namespace, m.Name), c.Name, err)
		}
		rel.types[i] = t
	}
	return rel, nil
}

// lookupType resolves one type OID through StreamConfig.Types.
func (s *Stream) lookupType(ctx context.Context, oid uint32) (*pgjson.Type, error) {
	if s.cfg.Types == nil {
		t, _ := pgjson.Builtin(oid)
		return t, nil
	}
	return s.cfg.Types.Resolve(ctx, oid)
}

func (s *Stream) relation(id uint32) (*relation, error) {
	if !s.inTx {
		return nil, fmt.Errorf("%w: change outside a transaction", ErrProtocol)
	}
	rel, ok := s.relations[id]
	if !ok {
		return nil, fmt.Errorf("%w: change for relation %d before its RELATION message", ErrProtocol, id)
	}
	return rel, nil
}

func (s *Stream) change(lsn pgoutput.LSN, relID uint32, op string, oldKind byte, old, newT pgoutput.Tuple, emit func(Item) error) error {
	resolved, err := s.relation(relID)
	if err != nil {
		return err
	}
	rel := resolved.RelationMessage
	s.seq++
	if rel.Namespace == s.cfg.RegistrySchema {
		switch rel.Name {
		case s.cfg.RegistryTable:
			return s.registryChange(lsn, rel, old, newT, false, emit)
		case s.cfg.SchemaRegistryTable:
			return s.registryChange(lsn, rel, old, newT, true, emit)
		case s.cfg.ControlTable:
			if op == OpInsert {
				s.controlRow(rel, newT)
			}
			return nil
		}
	}
	w, ok := s.watchFor(rel.ID, rel.Namespace)
	if !ok {
		// In the publication but not registered (added by hand): not ours to
		// audit.
		return nil
	}
	if s.skip != nil {
		s.countSkipped(rel, op)
		return nil
	}
	if op == OpUpdate && len(w.OnColumns) > 0 && oldKind == 'O' && !changedAny(rel, old, newT, w.OnColumns) {
		return nil
	}
	if (old != nil && len(old) != len(rel.Columns)) || (newT != nil && len(newT) != len(rel.Columns)) {
		return fmt.Errorf("%w: tuple of %s has a column count that differs from its RELATION message (%d)", ErrProtocol, QualifiedName(rel.Namespace, rel.Name), len(rel.Columns))
	}

	ev := s.newEvent(lsn, resolved.name, w, op)
	b := make([]byte, 0, 384+len(w.Kind)+len(w.Source)+tupleSize(rel, old)+tupleSize(rel, newT))
	b = s.appendHead(b, ev)
	var missing []string
	oldFull := oldKind == 'O'
	if old != nil {
		b = append(b, `,"old":`...)
		b, _ = appendRow(b, resolved, old, nil, oldKind == 'K')
	}
	if newT != nil {
		b = append(b, `,"new":`...)
		var fallback pgoutput.Tuple
		if oldFull {
			fallback = old
		}
		b, missing = appendRow(b, resolved, newT, fallback, false)
	}
	b = s.appendMetadata(b, ev, lsn)
	if (op == OpUpdate || op == OpDelete) && oldKind != 'O' {
		// The old row is the key at most (REPLICA IDENTITY DEFAULT or
		// USING INDEX), or absent (an UPDATE that kept the key).
		b = append(b, `,"old_is_key_only":true`...)
	}
	if len(missing) > 0 {
		b = append(b, `,"unavailable_columns":[`...)
		for i, name := range missing {
			if i > 0 {
				b = append(b, ',')
			}
			b = pgjson.AppendString(b, []byte(name))
		}
		b = append(b, ']')
	}
	b = append(b, "}}}"...)
	ev.Body = b
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// tupleSize estimates the JSON size of t (values, column names,
// punctuation) so that the envelope is usually built without regrowing.
// t has as many columns as rel.
func tupleSize(rel *pgoutput.RelationMessage, t pgoutput.Tuple) int {
	n := 0
	for i, c := range t {
		n += len(c.Data) + len(rel.Columns[i].Name) + 8
	}
	return n
}

func (s *Stream) truncate(lsn pgoutput.LSN, m *pgoutput.TruncateMessage, emit func(Item) error) error {
	for _, id := range m.RelationIDs {
		resolved, err := s.relation(id)
		if err != nil {
			return err
		}
		rel := resolved.RelationMessage
		s.seq++
		w, ok := s.watchFor(rel.ID, rel.Namespace)
		if !ok || rel.Namespace == s.cfg.RegistrySchema {
			continue
		}
		if s.skip != nil {
			s.countSkipped(rel, OpTruncate)
			continue
		}
		ev := s.newEvent(lsn, QualifiedName(rel.Namespace, rel.Name), w, OpTruncate)
		b := s.appendHead(make([]byte, 0, 384), ev)
		b = append(b, `,"cascade":`...)
		b = strconv.AppendBool(b, m.Options&pgoutput.TruncateCascade != 0)
		b = append(b, `,"restart_identity":`...)
		b = strconv.AppendBool(b, m.Options&pgoutput.TruncateRestartIdentity != 0)
		b = s.appendMetadata(b, ev, lsn)
		b = append(b, "}}}"...)
		ev.Body = b
		if err := emit(Item{Kind: ItemEvent, Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stream) newEvent(lsn pgoutput.LSN, table string, w Watch, op string) *Event {
	pos := Position{CommitLSN: s.begin.FinalLSN, Seq: s.seq}
	return &Event{
		Key:        Key(s.cfg.SystemID, s.cfg.Slot, pos),
		Pos:        pos,
		LSN:        lsn,
		Kind:       w.Kind,
		Source:     w.Source,
		Table:      table,
		Operation:  op,
		CommitTime: s.commitTime,
	}
}

// appendHead writes the envelope up to and including payload.operation.
func (s *Stream) appendHead(b []byte, ev *Event) []byte {
	b = append(b, `{"kind":`...)
	b = pgjson.AppendString(b, []byte(ev.Kind))
	b = append(b, `,"source":`...)
	b = pgjson.AppendString(b, []byte(ev.Source))
	b = append(b, `,"timestamp":"`...)
	b = append(b, s.timestamp...)
	b = append(b, `","payload":{"table":`...)
	b = pgjson.AppendString(b, []byte(ev.Table))
	b = append(b, `,"operation":"`...)
	b = append(b, ev.Operation...)
	b = append(b, '"')
	return b
}

// appendMetadata writes payload.metadata, leaving the object open so callers
// can add fields.
func (s *Stream) appendMetadata(b []byte, ev *Event, lsn pgoutput.LSN) []byte {
	b = append(b, `,"metadata":{"commit_lsn":"`...)
	b = s.begin.FinalLSN.AppendText(b)
	b = append(b, `","lsn":"`...)
	b = lsn.AppendText(b)
	b = append(b, `","xid":`...)
	b = strconv.AppendUint(b, uint64(s.begin.Xid), 10)
	b = append(b, `,"commit_timestamp":"`...)
	b = append(b, s.timestamp...)
	b = append(b, `","idempotency_key":`...)
	b = pgjson.AppendString(b, []byte(ev.Key))
	// The self-linked stream: the previous event's position (null for the
	// first one known) and this event's index in its transaction. The last
	// event of a transaction also carries tx_events (see markLast). A
	// verifier can tell from these alone that nothing is missing.
	b = append(b, `,"prev":`...)
	if s.prev.IsZero() {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = s.prev.AppendText(b)
		b = append(b, '"')
	}
	s.prev = ev.Pos
	s.txCount++
	b = append(b, `,"tx_index":`...)
	b = strconv.AppendUint(b, uint64(s.txCount), 10)
	if s.annotations != nil {
		b = append(b, `,"annotations":`...)
		b = append(b, s.annotations...)
	} else if s.annotationsErr != "" {
		b = append(b, `,"annotations_error":`...)
		b = pgjson.AppendString(b, []byte(s.annotationsErr))
	}
	return b
}

// appendRow writes a tuple as a JSON object keyed by column name. Unchanged
// TOAST values are taken from fallback (the full old row) when it has them;
// the names of columns that could not be filled are returned and left out.
// keyOnly tuples carry only the replica identity columns.
func appendRow(b []byte, rel *relation, t, fallback pgoutput.Tuple, keyOnly bool) ([]byte, []string) {
	var missing []string
	b = append(b, '{')
	first := true
	for i, col := range t {
		rc := &rel.Columns[i]
		if keyOnly && rc.Flags&1 == 0 {
			continue
		}
		if col.Kind == pgoutput.TupleUnchanged && fallback != nil && fallback[i].Kind != pgoutput.TupleUnchanged {
			col = fallback[i]
		}
		if col.Kind == pgoutput.TupleUnchanged {
			missing = append(missing, rc.Name)
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, rel.keys[i]...)
		b = appendColumn(b, rel.types[i], col)
	}
	return append(b, '}'), missing
}

// appendColumn writes one value of type t (nil: text). A value that does not
// parse as its type says it is (which would be a server bug or a type we map
// wrongly) is sent as its text form rather than stopping the audit trail.
func appendColumn(b []byte, t *pgjson.Type, col pgoutput.TupleColumn) []byte {
	switch col.Kind {
	case pgoutput.TupleNull:
		return append(b, "null"...)
	case pgoutput.TupleBinary:
		// Never requested; keep the bytes recognisable rather than failing.
		return pgjson.AppendString(b, []byte(`\x`+fmt.Sprintf("%x", col.Data)))
	}
	out, err := pgjson.AppendValue(b, t, col.Data)
	if err != nil {
		return pgjson.AppendString(b, col.Data)
	}
	return out
}

// FormatTimestamp formats t in UTC the way the spine (Python's isoformat)
// writes timestamps back: seconds, microseconds only when not zero, and an
// explicit +00:00 offset.
func FormatTimestamp(t time.Time) string {
	return string(AppendTimestamp(nil, t))
}

// AppendTimestamp appends FormatTimestamp(t) to b. It writes the digits
// itself: time.Format's layout interpreter was 5 % of the agent's CPU at one
// event per transaction.
func AppendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		// Beyond Python's datetime; written as time.Format writes it.
		if t.Nanosecond()/1000 == 0 {
			return t.AppendFormat(b, "2006-01-02T15:04:05+00:00")
		}
		return t.AppendFormat(b, "2006-01-02T15:04:05.000000+00:00")
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	if us := t.Nanosecond() / 1000; us != 0 {
		b = append(b, '.')
		b = appendDigits(b, us, 6)
	}
	return append(b, "+00:00"...)
}

// appendDigits appends the last width decimal digits of v (v >= 0),
// zero-padded.
func appendDigits(b []byte, v, width int) []byte {
	b = append(b, "000000"[:width]...)
	for i := len(b) - 1; i >= len(b)-width; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

// QualifiedName writes schema.table, double-quoting either part unless it is a
// plain lower-case identifier, so that the result is unambiguous and matches
// what users type for ordinary names ("public.decisions").
func QualifiedName(schema, table string) string {
	return QuoteIdent(schema) + "." + QuoteIdent(table)
}

// QuoteIdent double-quotes s unless it is a plain lower-case identifier.
func QuoteIdent(s string) string {
	plain := s != ""
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case (c >= '0' && c <= '9') && i > 0:
		default:
			plain = false
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
