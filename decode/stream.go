package decode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
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
	// PartitionTable names the table, in RegistrySchema, recording the
	// partitions of watched partitioned tables (ATTACH and DETACH events).
	PartitionTable string
	// RewriteTable names the table, in RegistrySchema, recording the DDL
	// that rewrote a watched table's values (REWRITE events).
	RewriteTable string
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
	name  string         // ident.Qualified, made once per RELATION message, not per event
	keys  [][]byte       // per column, its name as a JSON string and ':', made once too
	order []int          // the columns in the order rows are written: by name
}

// columnOrder returns the indexes of cols sorted by column name: canonical
// JSON writes an object's members in that order.
func columnOrder(cols []pgoutput.RelationColumn) []int {
	order := make([]int, len(cols))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(cols[a].Name, cols[b].Name) })
	return order
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
	Event  *envelope.Event
	EndLSN pgoutput.LSN
	// Backfills, on an ItemCommit, are the backfills whose last chunk the
	// transaction wrote: delivered once it is.
	Backfills []int64
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
	timestamp  string // commit time, ISO 8601, of the current transaction
	commitTime time.Time

	// Per-transaction capture state (see capture.go).
	annotations    []byte // compact JSON object, or nil
	annotationsErr string
	skip           []byte // the skip marker's content while skipping, else nil
	skipped        []*skipCount
	// backfillAuth are the backfill chunks the transaction's control rows
	// authorised, not yet used.
	backfillAuth []controlRow
	// backfillsDone are the backfills whose last chunk the transaction
	// wrote (Item.Backfills of its commit).
	backfillsDone []int64
	// emptied are the watched tables (by relation OID) the transaction
	// truncated, with no change of theirs since: the TRUNCATE triggers
	// of their partitions, which that TRUNCATE fired, add nothing
	// (partitionTruncated).
	emptied map[uint32]bool

	// release is handed the pieces of large values once converted
	// (SetRelease); nil when the message is not to be dropped as it goes.
	release func([]byte)

	// identity remembers the replica identity last reported per watched
	// relation, so a weakening is reported once.
	identity map[uint32]byte

	// The self-linked stream (see newEvent): the position of the previous
	// event, the number of events built in this transaction, and the last of
	// them, held back until it is known whether it is the last.
	prev    envelope.Position
	txCount uint32
	held    *envelope.Event
	// rows are two buffers the rows of events are built in, taken in turn:
	// one for the event held back, one for the event being built. An event
	// copies its rows into its own Body when it is released (Finish).
	rows [2][]byte
	turn int
}

// SetPrevious tells the stream the position of the last event already
// delivered (read back from the spine at the start of a session), so the
// first event it builds links to it when the replay regenerates nothing
// before it.
func (s *Stream) SetPrevious(p envelope.Position) { s.prev = p }

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

// SetRelease sets what the messages applied next hand each converted piece
// of a large value (over 8 MiB) to: a message mapped from a file
// (mapped.Region.Release) then drops its pages as they are used, and is not
// held twice over with the envelope built from it. nil ends that.
func (s *Stream) SetRelease(release func([]byte)) { s.release = release }

// Apply feeds one message, received at WAL position lsn, and calls emit for
// each item it yields, in order. Tuple data of m may be reused after Apply
// returns: events own their bytes. ctx bounds the type lookups (see
// StreamConfig.Types), whose errors Apply returns.
func (s *Stream) Apply(ctx context.Context, lsn pgoutput.LSN, m pgoutput.Message, emit func(Item) error) error {
	return s.apply(ctx, lsn, m, func(it Item) error {
		switch it.Kind {
		case ItemEvent:
			// Hold each event until the next one or the commit: only then
			// is it known whether it is the transaction's last, which its
			// metadata says (tx_events). It is encoded when released.
			held := s.held
			s.held = it.Event
			if held != nil {
				held.Finish()
				return emit(Item{Kind: ItemEvent, Event: held})
			}
			return nil
		case ItemCommit:
			if held := s.held; held != nil {
				s.held = nil
				held.TxEvents = s.txCount
				held.Finish()
				if err := emit(Item{Kind: ItemEvent, Event: held}); err != nil {
					return err
				}
			}
		}
		return emit(it)
	})
}

func (s *Stream) apply(ctx context.Context, lsn pgoutput.LSN, m pgoutput.Message, emit func(Item) error) error {
	switch m := m.(type) {
	case *pgoutput.BeginMessage:
		if s.inTx {
			return fmt.Errorf("%w: BEGIN of xid %d inside xid %d", ErrProtocol, m.Xid, s.begin.Xid)
		}
		s.inTx, s.begin, s.seq, s.txCount, s.held = true, *m, 0, 0, nil
		s.commitTime = pgoutput.PGTime(m.CommitTime)
		s.timestamp = envelope.FormatTimestamp(s.commitTime)
		s.annotations, s.annotationsErr, s.skip, s.skipped, s.backfillAuth, s.backfillsDone = nil, "", nil, nil, nil, nil
		clear(s.emptied)
		return nil
	case *pgoutput.CommitMessage:
		if !s.inTx {
			return fmt.Errorf("%w: COMMIT outside a transaction", ErrProtocol)
		}
		if err := s.emitSkipSummaries(lsn, emit); err != nil {
			return err
		}
		s.inTx = false
		done := s.backfillsDone
		s.backfillsDone = nil
		return emit(Item{Kind: ItemCommit, EndLSN: m.EndLSN, Backfills: done})
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
		return s.change(lsn, m.RelationID, envelope.OpInsert, 0, nil, m.New, emit)
	case *pgoutput.UpdateMessage:
		return s.change(lsn, m.RelationID, envelope.OpUpdate, m.OldKind, m.Old, m.New, emit)
	case *pgoutput.DeleteMessage:
		return s.change(lsn, m.RelationID, envelope.OpDelete, m.OldKind, m.Old, nil, emit)
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
	rel := &relation{RelationMessage: m, types: make([]*pgjson.Type, len(m.Columns)), name: ident.Qualified(m.Namespace, m.Name),
		keys: make([][]byte, len(m.Columns)), order: columnOrder(m.Columns)}
	for i, c := range m.Columns {
		rel.keys[i] = append(pgjson.AppendText(nil, c.Name), ':')
		t, err := s.lookupType(ctx, c.TypeOID)
		if err != nil {
			return nil, fmt.Errorf("resolving the type of %s.%s: %w", ident.Qualified(m.Namespace, m.Name), c.Name, err)
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
	delete(s.emptied, rel.ID)
	if rel.Namespace == s.cfg.RegistrySchema {
		switch rel.Name {
		case s.cfg.RegistryTable:
			return s.registryChange(lsn, rel, old, newT, false, emit)
		case s.cfg.SchemaRegistryTable:
			return s.registryChange(lsn, rel, old, newT, true, emit)
		case s.cfg.PartitionTable:
			return s.partitionChange(lsn, rel, old, newT, emit)
		case s.cfg.RewriteTable:
			if op == envelope.OpInsert {
				return s.rewrite(lsn, rel, newT, emit)
			}
			return nil
		case s.cfg.ControlTable:
			if op == envelope.OpInsert {
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
	if op == envelope.OpUpdate && len(w.OnColumns) > 0 && oldKind == 'O' && !changedAny(rel, old, newT, w.OnColumns) {
		return nil
	}
	if (old != nil && len(old) != len(rel.Columns)) || (newT != nil && len(newT) != len(rel.Columns)) {
		return fmt.Errorf("%w: tuple of %s has a column count that differs from its RELATION message (%d)", ErrProtocol, ident.Qualified(rel.Namespace, rel.Name), len(rel.Columns))
	}

	ev := s.newEvent(lsn, resolved.name, w, op)
	var fallback pgoutput.Tuple
	if oldKind == 'O' {
		fallback = old
	}
	size := tupleSize(rel, old) + tupleSize(rel, newT) + 4
	if size > maxKeptRows {
		// A large row: built where the event will be encoded, not copied
		// there (see envelope.Event.BuildRowsInPlace).
		s.buildInPlace(ev, resolved, size, old, newT, fallback, oldKind == 'K')
	} else {
		rows := slices.Grow(s.rows[s.turn][:0], size)
		if old != nil {
			rows, _ = appendRow(rows, resolved, old, nil, oldKind == 'K', nil)
			ev.Old = rows[:len(rows):len(rows)]
		}
		if newT != nil {
			n := len(rows)
			rows, ev.Unavailable = appendRow(rows, resolved, newT, fallback, false, nil)
			ev.New = rows[n:len(rows):len(rows)]
		}
		s.keepRows(rows)
	}
	// The old row is the key at most (REPLICA IDENTITY DEFAULT or USING
	// INDEX), or absent (an UPDATE that kept the key).
	ev.OldIsKeyOnly = (op == envelope.OpUpdate || op == envelope.OpDelete) && oldKind != 'O'
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// valuePiece is the piece a large value is converted in when its bytes can
// be dropped as it goes (appendRow's release).
const valuePiece = 4 << 20

// maxKeptRows bounds the rows buffer kept for the next event: a larger
// event's rows are built in place instead (buildInPlace).
const maxKeptRows = 1 << 20

// buildInPlace builds a large event's rows in the buffer its envelope will
// be encoded into: an UPDATE of a 200 MiB value otherwise holds its 400 MiB
// of rows twice while it is encoded. The room before the rows covers the
// names of unavailable columns, which are known only once the new row is
// built.
func (s *Stream) buildInPlace(ev *envelope.Event, rel *relation, size int, old, newT, fallback pgoutput.Tuple, keyOnly bool) {
	room := 0
	for _, c := range rel.Columns {
		room += len(c.Name) + 8
	}
	var buildNew, buildOld func([]byte) []byte
	if newT != nil {
		buildNew = func(b []byte) []byte {
			b, ev.Unavailable = appendRow(b, rel, newT, fallback, false, s.release)
			return b
		}
	}
	if old != nil {
		buildOld = func(b []byte) []byte {
			b, _ = appendRow(b, rel, old, nil, keyOnly, s.release)
			return b
		}
	}
	ev.BuildRowsInPlace(size, room, buildNew, buildOld)
}

// keepRows keeps the buffer the current event's rows were built in, and
// turns to the other one for the next event.
func (s *Stream) keepRows(rows []byte) {
	if cap(rows) > maxKeptRows {
		rows = nil
	}
	s.rows[s.turn] = rows
	s.turn ^= 1
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
		if s.emptied == nil {
			s.emptied = map[uint32]bool{}
		}
		s.emptied[rel.ID] = true
		if s.skip != nil {
			s.countSkipped(rel, envelope.OpTruncate)
			continue
		}
		ev := s.newEvent(lsn, ident.Qualified(rel.Namespace, rel.Name), w, envelope.OpTruncate)
		ev.Fields = []envelope.Field{
			{Name: "cascade", Value: strconv.AppendBool(nil, m.Options&pgoutput.TruncateCascade != 0)},
			{Name: "restart_identity", Value: strconv.AppendBool(nil, m.Options&pgoutput.TruncateRestartIdentity != 0)},
		}
		if err := emit(Item{Kind: ItemEvent, Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

// newEvent starts the envelope of the change at the current sequence
// number, labelled by w, and links it into the self-linked stream: it names
// the previous event (prev) and its place in the transaction (tx_index).
// A verifier can tell from these alone that nothing is missing.
func (s *Stream) newEvent(lsn pgoutput.LSN, table string, w Watch, op string) *envelope.Event {
	pos := envelope.Position{CommitLSN: s.begin.FinalLSN, Seq: s.seq}
	s.txCount++
	ev := &envelope.Event{
		Pos:        pos,
		CommitTime: s.commitTime,
		Envelope: envelope.Envelope{
			Kind: w.Kind, Source: w.Source, Timestamp: s.timestamp,
			Table: table, Operation: op,
			CommitLSN: s.begin.FinalLSN, LSN: lsn, Xid: s.begin.Xid, HasXid: true,
			CommitTimestamp: s.timestamp,
			Key:             envelope.Key(s.cfg.SystemID, s.cfg.Slot, pos),
			Linked:          true, Prev: s.prev, TxIndex: s.txCount,
			Annotations: s.annotations, AnnotationsError: s.annotationsErr,
		},
	}
	s.prev = pos
	return ev
}

// appendRow writes a tuple as a JSON object keyed by column name. Unchanged
// TOAST values are taken from fallback (the full old row) when it has them;
// the names of columns that could not be filled are returned and left out.
// keyOnly tuples carry only the replica identity columns.
//
// release, when set, is handed each piece of a large value once it is
// converted (pgjson.AppendValuePieces), so that the message's bytes can be
// dropped while the rest is converted (Stream.SetRelease).
func appendRow(b []byte, rel *relation, t, fallback pgoutput.Tuple, keyOnly bool, release func([]byte)) ([]byte, []string) {
	var missing []string
	b = append(b, '{')
	first := true
	for _, i := range rel.order {
		col, rc := t[i], &rel.Columns[i]
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
		b = appendColumn(b, rel.types[i], col, release)
	}
	return append(b, '}'), missing
}

// appendColumn writes one value of type t (nil: text). A value that does not
// parse as its type says it is (which would be a server bug or a type we map
// wrongly) is sent as its text form rather than stopping the audit trail.
func appendColumn(b []byte, t *pgjson.Type, col pgoutput.TupleColumn, release func([]byte)) []byte {
	switch col.Kind {
	case pgoutput.TupleNull:
		return append(b, "null"...)
	case pgoutput.TupleBinary:
		// Never requested; keep the bytes recognisable rather than failing.
		return pgjson.AppendText(b, `\x`+fmt.Sprintf("%x", col.Data))
	}
	if release != nil && len(col.Data) > 2*valuePiece {
		out, ok, err := pgjson.AppendValuePieces(b, t, col.Data, valuePiece, release)
		if ok && err == nil {
			return out
		}
	}
	out, err := pgjson.AppendValue(b, t, col.Data)
	if err != nil {
		return pgjson.AppendString(b, col.Data)
	}
	return out
}
