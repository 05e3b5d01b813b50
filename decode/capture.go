package decode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Logical message prefixes understood in a transaction.
const (
	// AnnotationsPrefix carries a JSON object that every later change event
	// of the transaction carries under payload.metadata.annotations (a later
	// message replaces it). pgaudit_cdc.annotate(jsonb) emits it.
	AnnotationsPrefix = "pgaudit_cdc.annotations"
	// SequinAnnotationsSet and SequinAnnotationsClear are Sequin's
	// equivalents, honoured so its users switch without code changes.
	SequinAnnotationsSet   = "sequin:transaction_annotations.set"
	SequinAnnotationsClear = "sequin:transaction_annotations.clear"
	// BemiPrefix is Bemi's context message (its ORM packages send it).
	BemiPrefix = "_bemi"
	// SkipPrefix turns the rest of the transaction's changes into one
	// summary event per table. pgaudit_cdc.skip(reason) emits it.
	// SkipPrefix is the prefix older versions' pgaudit_cdc.skip(reason)
	// emitted. Such messages are now ignored (and counted): skipping is
	// authorised by a pgaudit_cdc.control row only.
	SkipPrefix = "pgaudit_cdc.skip"
	// BackfillPrefix carries a chunk of existing rows, written by
	// `pgaudit-cdc backfill`, delivered as READ events.
	BackfillPrefix = "pgaudit_cdc.backfill"
	// CheckpointPrefix carries a digest of a table's rows, written by
	// `pgaudit-cdc checkpoint`, delivered as a CHECKPOINT event.
	CheckpointPrefix = "pgaudit_cdc.checkpoint"
)

func (s *Stream) logicalMessage(ctx context.Context, lsn pgoutput.LSN, m *pgoutput.LogicalMessage, emit func(Item) error) error {
	if !m.Transactional || !s.inTx {
		return nil // non-transactional messages are not part of any change
	}
	switch m.Prefix {
	case AnnotationsPrefix, SequinAnnotationsSet, BemiPrefix:
		s.seq++
		obj, err := compactObject(m.Content)
		if err != nil {
			s.annotations = nil
			s.annotationsErr = fmt.Sprintf("malformed %s message: %v", m.Prefix, err)
			return emit(Item{Kind: ItemNotice, Notice: s.annotationsErr + fmt.Sprintf(" (xid %d, at %s)", s.begin.Xid, lsn)})
		}
		s.annotations, s.annotationsErr = obj, ""
		return nil
	case SequinAnnotationsClear:
		s.seq++
		s.annotations, s.annotationsErr = nil, ""
		return nil
	case SkipPrefix:
		// Any role may emit a logical message: a skip marker counts only as
		// a pgaudit_cdc.control row (see controlRow), never as a message.
		s.seq++
		return emit(Item{Kind: ItemRejectedControl, Prefix: m.Prefix,
			Notice: fmt.Sprintf("ignored a %s message without an authorising pgaudit_cdc.control row (xid %d, at %s): the transaction's changes are audited row by row; only pgaudit_cdc.skip(), run by a role allowed to write pgaudit_cdc.control, skips them", m.Prefix, s.begin.Xid, lsn)})
	case BackfillPrefix:
		return s.backfill(ctx, lsn, m, emit)
	case CheckpointPrefix:
		return s.checkpoint(lsn, m, emit)
	default:
		s.seq++
		return nil
	}
}

// compactObject validates a JSON object and writes it in canonical form.
func compactObject(content []byte) ([]byte, error) {
	trimmed := bytes.TrimSpace(content)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	return envelope.CanonicalRaw(trimmed)
}

// skipCount is one table's tally in a skipped transaction.
type skipCount struct {
	rel    *pgoutput.RelationMessage
	watch  Watch
	counts map[string]int
}

func (s *Stream) countSkipped(rel *pgoutput.RelationMessage, op string) {
	for _, c := range s.skipped {
		if c.rel.ID == rel.ID {
			c.counts[op]++
			return
		}
	}
	w, _ := s.watchFor(rel.ID, rel.Namespace)
	s.skipped = append(s.skipped, &skipCount{rel: rel, watch: w, counts: map[string]int{op: 1}})
}

// emitSkipSummaries writes, at commit, one SUMMARY event per table whose
// changes were skipped: the counts and the skip marker's content.
func (s *Stream) emitSkipSummaries(lsn pgoutput.LSN, emit func(Item) error) error {
	for _, c := range s.skipped {
		s.seq++
		ev := s.newEvent(lsn, ident.Qualified(c.rel.Namespace, c.rel.Name), c.watch, envelope.OpSummary)
		counts, err := envelope.Canonical(c.counts)
		if err != nil {
			return fmt.Errorf("BUG: encoding skip counts: %w", err)
		}
		ev.Fields = []envelope.Field{{Name: "counts", Value: counts}, {Name: "skip", Value: s.skip}}
		if err := emit(Item{Kind: ItemEvent, Event: ev}); err != nil {
			return err
		}
	}
	s.skipped = nil
	return nil
}

// changedAny reports whether any of cols differs between the old and new
// row. An unchanged TOAST value ('u') is unchanged by definition. A column
// of cols the relation no longer has (renamed, dropped) counts as changed:
// a rename must not switch the filter off and hide every UPDATE.
func changedAny(rel *pgoutput.RelationMessage, old, newT pgoutput.Tuple, cols []string) bool {
	for _, c := range cols {
		if !slices.ContainsFunc(rel.Columns, func(rc pgoutput.RelationColumn) bool { return rc.Name == c }) {
			return true
		}
	}
	for i, rc := range rel.Columns {
		if i >= len(old) || i >= len(newT) || !slices.Contains(cols, rc.Name) {
			continue
		}
		o, n := old[i], newT[i]
		if n.Kind == pgoutput.TupleUnchanged {
			continue
		}
		if o.Kind != n.Kind || !bytes.Equal(o.Data, n.Data) {
			return true
		}
	}
	return false
}

// registryEntry is a row of the watch registry tables.
type registryEntry struct {
	envelope.WatchEntry // what a self-audit event shows of it
	TableOID            uint32
	ChangedBy           string
	hasKey              bool
}

// textArrayType maps the registry's text[] columns.
var textArrayType, _ = pgjson.Builtin(1009)

// parseRegistryRow reads a registry row; bySchema says the row is keyed by
// schema_name (schema-wide watches) rather than table_oid.
func parseRegistryRow(rel *pgoutput.RelationMessage, row pgoutput.Tuple, bySchema bool) registryEntry {
	var e registryEntry
	var schema, table string
	textColumns(rel, row, func(name string, v []byte) {
		switch name {
		case "table_oid":
			if oid, err := strconv.ParseUint(string(v), 10, 32); err == nil {
				e.TableOID, e.hasKey = uint32(oid), true
			}
		case "schema_name":
			schema = string(v)
			if bySchema {
				e.Schema, e.hasKey = schema, true
			}
		case "table_name":
			table = string(v)
		case "kind":
			e.Kind = string(v)
		case "source":
			e.Source = string(v)
		case "active":
			e.Active = string(v) == "t"
		case "row_filter":
			f := string(v)
			e.RowFilter = &f
		case "columns":
			e.Columns = parseTextArray(v)
		case "exclude_columns":
			e.ExcludeColumns = parseTextArray(v)
		case "on_columns":
			e.OnColumns = parseTextArray(v)
		case "changed_by":
			e.ChangedBy = string(v)
		case "dropped_at":
			e.DroppedAt = string(v)
		case "origin":
			if obj, err := compactObject(v); err == nil {
				e.Origin = obj
			}
		}
	})
	if table != "" {
		e.Table = ident.Qualified(schema, table)
	}
	return e
}

// textColumns calls f with the name and the text of each column of row that
// holds a value (not NULL, not an unchanged TOAST value).
func textColumns(rel *pgoutput.RelationMessage, row pgoutput.Tuple, f func(name string, v []byte)) {
	for i, rc := range rel.Columns {
		if i < len(row) && row[i].Kind == pgoutput.TupleText {
			f(rc.Name, row[i].Data)
		}
	}
}

func parseTextArray(v []byte) []string {
	js, err := pgjson.AppendValue(nil, textArrayType, v)
	if err != nil {
		return nil
	}
	var out []string
	if json.Unmarshal(js, &out) != nil {
		return nil
	}
	return out
}

// registryChange applies a change of a watch registry table, the per-table
// one or, bySchema, the schema-wide one, and emits the registry's own audit
// event. The registry tables have REPLICA IDENTITY FULL, so updates and
// deletes carry the whole old row.
func (s *Stream) registryChange(lsn pgoutput.LSN, rel *pgoutput.RelationMessage, old, newT pgoutput.Tuple, bySchema bool, emit func(Item) error) error {
	before, after := registryRows(rel, old, newT, bySchema)
	cur := after
	if cur == nil {
		cur = before
	}
	if cur == nil || !cur.hasKey {
		return nil
	}
	it := Item{Kind: ItemWatchChanged, Watch: Watch{Kind: cur.Kind, Source: cur.Source, Active: cur.Active && after != nil}}
	if bySchema {
		it.Schema = cur.Schema
		it.Previous, it.Existed = s.schemaWatches[cur.Schema]
		s.schemaWatches[cur.Schema] = it.Watch
	} else {
		it.TableOID = cur.TableOID
		it.Watch.OnColumns = cur.OnColumns
		it.Watch.KeyIdentity = len(cur.Columns) > 0 || len(cur.ExcludeColumns) > 0
		it.Previous, it.Existed = s.watches[cur.TableOID]
		s.watches[cur.TableOID] = it.Watch
	}
	if !it.Existed || !it.Previous.equal(it.Watch) {
		if err := emit(it); err != nil {
			return err
		}
	}
	return s.selfAudit(lsn, rel, before, after, emit)
}

func registryRows(rel *pgoutput.RelationMessage, old, newT pgoutput.Tuple, bySchema bool) (before, after *registryEntry) {
	if old != nil {
		e := parseRegistryRow(rel, old, bySchema)
		before = &e
	}
	if newT != nil {
		e := parseRegistryRow(rel, newT, bySchema)
		after = &e
	}
	return before, after
}

// selfAudit emits the registry's own event: which watch changed, how, and
// who changed it, in commit order with the data around it.
func (s *Stream) selfAudit(lsn pgoutput.LSN, rel *pgoutput.RelationMessage, before, after *registryEntry, emit func(Item) error) error {
	var action string
	var shown, previous *registryEntry
	switch {
	case after != nil && after.DroppedAt != "" && before != nil && before.DroppedAt == "" && before.Active:
		action, shown, previous = envelope.OpDrop, after, before
	case after != nil && after.Active && (before == nil || !before.Active):
		action, shown = envelope.OpWatch, after
	case after != nil && after.Active && before != nil && sameEntry(before, after):
		return nil // nothing an event shows changed (a migration filling a new column)
	case after != nil && after.Active:
		action, shown, previous = envelope.OpRewatch, after, before
	case before != nil && before.Active:
		action, previous = envelope.OpUnwatch, before
	default:
		return nil // a tombstone changed while inactive: nothing to say
	}
	by := ""
	if after != nil {
		by = after.ChangedBy
	} else {
		by = before.ChangedBy
	}
	ev := s.newEvent(lsn, ident.Qualified(rel.Namespace, rel.Name), Watch{Kind: envelope.SelfAuditKind, Source: envelope.SelfAuditSource}, action)
	if err := ev.SetSelfAudit(by, watchShown(previous), watchShown(shown)); err != nil {
		return fmt.Errorf("BUG: %w", err)
	}
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// watchShown is what a self-audit event shows of e (nil for none).
func watchShown(e *registryEntry) *envelope.WatchEntry {
	if e == nil {
		return nil
	}
	return &e.WatchEntry
}

// sameEntry reports whether two registry rows read the same in a self-audit
// event.
func sameEntry(a, b *registryEntry) bool {
	ja, errA := json.Marshal(a.WatchEntry)
	jb, errB := json.Marshal(b.WatchEntry)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// partitionEntry is a row of the partitions table.
type partitionEntry struct {
	Table            string `json:"table"`
	PartitionedTable string `json:"partitioned_table"`
	RootOID          uint32 `json:"-"`
	Truncates        int64  `json:"-"`
	Attached         bool   `json:"-"`
	How              string `json:"how"`
	ChangedBy        string `json:"-"`
	ChangedAt        string `json:"-"`
}

func parsePartitionRow(rel *pgoutput.RelationMessage, row pgoutput.Tuple) *partitionEntry {
	if row == nil {
		return nil
	}
	var e partitionEntry
	var schema, table string
	textColumns(rel, row, func(name string, b []byte) {
		v := string(b)
		switch name {
		case "schema_name":
			schema = v
		case "table_name":
			table = v
		case "root_name":
			e.PartitionedTable = v
		case "truncates":
			e.Truncates, _ = strconv.ParseInt(v, 10, 64)
		case "root_oid":
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				e.RootOID = uint32(n)
			}
		case "attached":
			e.Attached = v == "t"
		case "how":
			e.How = v
		case "changed_by":
			e.ChangedBy = v
		case "changed_at":
			e.ChangedAt = v
		}
	})
	e.Table = ident.Qualified(schema, table)
	return &e
}

// partitionChange emits ATTACH when a table joins a watched partitioned
// table (but not for those under it when its watch began), DETACH when
// one leaves it (detached or dropped), UNLOGGED when one under it is
// found unlogged (see migration 0014), UNAUDITED when one is found without
// its TRUNCATE trigger, and TRUNCATE when one was truncated (migration
// 0019). The table has REPLICA IDENTITY FULL.
func (s *Stream) partitionChange(lsn pgoutput.LSN, rel *pgoutput.RelationMessage, old, newT pgoutput.Tuple, emit func(Item) error) error {
	before, after := parsePartitionRow(rel, old), parsePartitionRow(rel, newT)
	if truncated(before, after) {
		return s.partitionTruncated(lsn, after, emit)
	}
	// A partition that comes, goes or changes is a change of its
	// partitioned table's rows as far as partitionTruncated is concerned.
	for _, e := range []*partitionEntry{before, after} {
		if e != nil {
			delete(s.emptied, e.RootOID)
		}
	}
	var action string
	switch {
	case after != nil && after.Attached && (before == nil || !before.Attached) && after.How != "watched":
		action = envelope.OpAttach
	case after != nil && !after.Attached && before != nil && before.Attached:
		action = envelope.OpDetach
	case after != nil && after.Attached && after.How == "unlogged" && before != nil &&
		(before.How != "unlogged" || before.ChangedAt != after.ChangedAt):
		action = envelope.OpUnlogged
	case after != nil && after.Attached && after.How == "unaudited" && before != nil && before.How != "unaudited":
		action = envelope.OpUnaudited
	default:
		return nil // re-rooted, or forgotten with its partitioned table's watch
	}
	fields, err := after.fields()
	if err != nil {
		return err
	}
	ev := s.newEvent(lsn, ident.Qualified(rel.Namespace, rel.Name), Watch{Kind: envelope.SelfAuditKind, Source: envelope.SelfAuditSource}, action)
	ev.Fields = fields
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// fields are what an event of a partition carries: who changed it, and the
// entry.
func (e *partitionEntry) fields() ([]envelope.Field, error) {
	js, err := envelope.Canonical(e)
	if err != nil {
		return nil, fmt.Errorf("BUG: encoding a partition entry: %w", err)
	}
	return []envelope.Field{{Name: "changed_by", Value: pgjson.AppendText(nil, e.ChangedBy)}, {Name: "partition", Value: js}}, nil
}

// truncated reports whether a row change of the partitions table is the
// mark of a TRUNCATE of the partition: pgaudit_cdc.partition_truncated, its
// trigger, counts each one in an attached table's row.
func truncated(before, after *partitionEntry) bool {
	return before != nil && after != nil && before.Attached && after.Attached && after.Truncates > before.Truncates
}

// partitionTruncated makes the TRUNCATE of a partition by itself, which
// pgoutput does not send (it publishes partitions as their partitioned
// table), a TRUNCATE event of its partitioned table's watch that names the
// partition. A TRUNCATE of the partitioned table fires its partitions'
// triggers too, after its own TRUNCATE message; such a mark, or any that
// follows that TRUNCATE in the transaction with no change of the
// partitioned table in between, truncated an empty table: it adds nothing.
func (s *Stream) partitionTruncated(lsn pgoutput.LSN, p *partitionEntry, emit func(Item) error) error {
	if s.emptied[p.RootOID] {
		return nil
	}
	w, ok := s.watchFor(p.RootOID, "")
	if !ok {
		return nil // its partitioned table's watch ended in this transaction
	}
	fields, err := p.fields()
	if err != nil {
		return err
	}
	ev := s.newEvent(lsn, p.PartitionedTable, w, envelope.OpTruncate)
	ev.Fields = fields
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// rewrite makes a row of the rewrites table (migration 0020) a REWRITE
// event of the watch that covers the table: DDL rewrote its stored values,
// which no row event shows.
func (s *Stream) rewrite(lsn pgoutput.LSN, rel *pgoutput.RelationMessage, row pgoutput.Tuple, emit func(Item) error) error {
	var watchOID uint32
	var schema, watched, by string
	var detail struct {
		Table   string `json:"table"`
		Reason  string `json:"reason"`
		Command string `json:"command"`
	}
	textColumns(rel, row, func(name string, b []byte) {
		v := string(b)
		switch name {
		case "watch_oid":
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				watchOID = uint32(n)
			}
		case "schema_name":
			schema = v
		case "table_name":
			detail.Table = v
		case "watched_name":
			watched = v
		case "reason":
			detail.Reason = v
		case "command":
			detail.Command = v
		case "changed_by":
			by = v
		}
	})
	w, ok := s.watchFor(watchOID, schema)
	if !ok {
		return nil
	}
	js, err := envelope.Canonical(detail)
	if err != nil {
		return fmt.Errorf("BUG: encoding a rewrite: %w", err)
	}
	ev := s.newEvent(lsn, watched, w, envelope.OpRewrite)
	ev.Fields = []envelope.Field{{Name: "changed_by", Value: pgjson.AppendText(nil, by)}, {Name: "rewrite", Value: js}}
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// BackfillChunk is the content of a BackfillPrefix message.
type BackfillChunk struct {
	ID       int64            `json:"backfill_id"`
	TableOID uint32           `json:"table_oid"`
	Schema   string           `json:"schema"`
	Table    string           `json:"table"`
	Chunk    int64            `json:"chunk"`
	Columns  []BackfillColumn `json:"columns"`
	Rows     [][]*string      `json:"rows"`
	// Last marks the backfill's last chunk: once its transaction is
	// delivered, so is the backfill (Item.Backfills).
	Last bool `json:"last,omitempty"`
}

// BackfillColumn names one column of a backfill chunk and its type.
type BackfillColumn struct {
	Name    string `json:"name"`
	TypeOID uint32 `json:"type_oid"`
}

// backfill turns a chunk of existing rows into READ events. The chunk was
// read under FOR SHARE in the transaction that wrote this message, so it sits
// in commit order: every change before it is older than its rows, every
// change after it newer.
func (s *Stream) backfill(ctx context.Context, lsn pgoutput.LSN, m *pgoutput.LogicalMessage, emit func(Item) error) error {
	var chunk BackfillChunk
	if err := json.Unmarshal(m.Content, &chunk); err != nil {
		s.seq++
		return emit(Item{Kind: ItemNotice, Notice: fmt.Sprintf("ignoring a malformed backfill message at %s: %v", lsn, err)})
	}
	if !s.useControlAuth("backfill", chunk.TableOID, m.Content) {
		s.seq++
		return emit(Item{Kind: ItemRejectedControl, Prefix: m.Prefix,
			Notice: fmt.Sprintf("ignored a backfill chunk for table OID %d without an authorising pgaudit_cdc.control row (xid %d, at %s): no READ events were produced; only `pgaudit-cdc backfill`, run by a role allowed to write pgaudit_cdc.control, can write one", chunk.TableOID, s.begin.Xid, lsn)})
	}
	if chunk.Last {
		s.backfillsDone = append(s.backfillsDone, chunk.ID)
	}
	w, ok := s.watchFor(chunk.TableOID, chunk.Schema)
	rel := &pgoutput.RelationMessage{ID: chunk.TableOID, Namespace: chunk.Schema, Name: chunk.Table, Columns: make([]pgoutput.RelationColumn, len(chunk.Columns))}
	types := make([]*pgjson.Type, len(chunk.Columns))
	for i, c := range chunk.Columns {
		t, err := s.lookupType(ctx, c.TypeOID)
		if err != nil {
			return fmt.Errorf("resolving type %d of a backfill chunk: %w", c.TypeOID, err)
		}
		rel.Columns[i] = pgoutput.RelationColumn{Name: c.Name, TypeOID: c.TypeOID}
		types[i] = t
	}
	order := columnOrder(rel.Columns)
	for _, row := range chunk.Rows {
		s.seq++
		if !ok || len(row) != len(rel.Columns) {
			continue
		}
		ev := s.newEvent(lsn, ident.Qualified(rel.Namespace, rel.Name), w, envelope.OpRead)
		ev.New = appendBackfillRow(make([]byte, 0, 256), rel, types, order, row)
		ev.Fields = []envelope.Field{{Name: "backfill", Value: backfillRef(chunk)}}
		if err := emit(Item{Kind: ItemEvent, Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

// appendBackfillRow writes one backfilled row as a JSON object, its columns
// in order (sorted by name).
func appendBackfillRow(b []byte, rel *pgoutput.RelationMessage, types []*pgjson.Type, order []int, row []*string) []byte {
	b = append(b, '{')
	for n, i := range order {
		if n > 0 {
			b = append(b, ',')
		}
		b = pgjson.AppendText(b, rel.Columns[i].Name)
		b = append(b, ':')
		if v := row[i]; v == nil {
			b = appendColumn(b, types[i], pgoutput.TupleColumn{Kind: pgoutput.TupleNull}, nil)
		} else {
			b = appendColumn(b, types[i], pgoutput.TupleColumn{Kind: pgoutput.TupleText, Data: []byte(*v)}, nil)
		}
	}
	return append(b, '}')
}

// backfillRef is payload.backfill of a READ event: which backfill and chunk.
func backfillRef(chunk BackfillChunk) []byte {
	b := append([]byte(nil), `{"chunk":`...)
	b = strconv.AppendInt(b, chunk.Chunk, 10)
	b = append(b, `,"id":`...)
	b = strconv.AppendInt(b, chunk.ID, 10)
	return append(b, '}')
}

// controlRow is an INSERT into the control table: the authority for a skip
// or a backfill chunk in the same transaction. Only roles granted INSERT on
// the table can write one, and its who-columns are set by a trigger from the
// session, so what the agent reads here is what PostgreSQL recorded.
type controlRow struct {
	id       string
	action   string
	reason   *string
	tableOID uint32
	digest   string
	byRole   string
	session  string
	appName  *string
}

func (s *Stream) controlRow(rel *pgoutput.RelationMessage, row pgoutput.Tuple) {
	var c controlRow
	textColumns(rel, row, func(name string, b []byte) {
		v := string(b)
		switch name {
		case "id":
			c.id = v
		case "action":
			c.action = v
		case "reason":
			c.reason = &v
		case "table_oid":
			if oid, err := strconv.ParseUint(v, 10, 32); err == nil {
				c.tableOID = uint32(oid)
			}
		case "digest":
			c.digest = v
		case "by_role":
			c.byRole = v
		case "session_role":
			c.session = v
		case "application_name":
			c.appName = &v
		}
	})
	switch c.action {
	case "skip":
		// Members in canonical (sorted) order.
		b := []byte(`{"application_name":`)
		b = appendNullableString(b, c.appName)
		b = append(b, `,"by":`...)
		b = pgjson.AppendText(b, c.byRole)
		b = append(b, `,"control_id":`...)
		b = pgjson.AppendText(b, c.id)
		b = append(b, `,"reason":`...)
		b = appendNullableString(b, c.reason)
		b = append(b, `,"session_user":`...)
		b = pgjson.AppendText(b, c.session)
		s.skip = append(b, '}')
	case "backfill", "checkpoint":
		s.backfillAuth = append(s.backfillAuth, c)
	}
}

func appendNullableString(b []byte, p *string) []byte {
	if p == nil {
		return append(b, "null"...)
	}
	return pgjson.AppendText(b, *p)
}

// useControlAuth consumes the control row that authorises a message of the
// given action (backfill, checkpoint) for table oid whose content is
// content: same action, same table, same SHA-256.
func (s *Stream) useControlAuth(action string, oid uint32, content []byte) bool {
	sum := sha256.Sum256(content)
	digest := hex.EncodeToString(sum[:])
	for i, c := range s.backfillAuth {
		if c.action == action && c.tableOID == oid && c.digest == digest {
			s.backfillAuth = slices.Delete(s.backfillAuth, i, i+1)
			return true
		}
	}
	return false
}

// checkReplicaIdentity reports a watched table whose RELATION message shows
// a replica identity other than FULL: its UPDATE and DELETE events then
// carry the key at most as old row. Reported when first seen weakened, and
// again after it was FULL in between.
func (s *Stream) checkReplicaIdentity(rel *pgoutput.RelationMessage, emit func(Item) error) error {
	if rel.Namespace == s.cfg.RegistrySchema {
		return nil
	}
	prev, seen := s.identity[rel.ID]
	s.identity[rel.ID] = rel.ReplicaIdentity
	if rel.ReplicaIdentity == 'f' || (seen && prev == rel.ReplicaIdentity) {
		return nil
	}
	if w, ok := s.watchFor(rel.ID, rel.Namespace); !ok || !w.Active || w.KeyIdentity {
		return nil
	}
	name := ident.Qualified(rel.Namespace, rel.Name)
	return emit(Item{Kind: ItemReplicaIdentity, TableOID: rel.ID, Table: name, ReplicaIdentity: rel.ReplicaIdentity,
		Notice: fmt.Sprintf("%s streams with REPLICA IDENTITY %s, not FULL: its UPDATE and DELETE events carry the key at most as old row (flagged old_is_key_only)", name, ReplicaIdentityName(rel.ReplicaIdentity))})
}

// ReplicaIdentityName spells a pg_class.relreplident code.
func ReplicaIdentityName(c byte) string {
	switch c {
	case 'd':
		return "DEFAULT"
	case 'n':
		return "NOTHING"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	}
	return fmt.Sprintf("%q", c)
}

// CheckpointMessage is the content of a CheckpointPrefix message.
type CheckpointMessage struct {
	ID       int64  `json:"checkpoint_id"`
	TableOID uint32 `json:"table_oid"`
	Schema   string `json:"schema"`
	Table    string `json:"table"`
	// Chunk numbers a chunked checkpoint's chunks from 1 (0: a checkpoint
	// of one snapshot, from before checkpoints were chunked); Last marks
	// the final one, which also carries the totals.
	Chunk int64 `json:"chunk,omitempty"`
	Last  bool  `json:"last,omitempty"`
	// Rows and Digest are the chunk's row count and order-independent hash.
	Rows       int64    `json:"rows"`
	Digest     string   `json:"digest"`
	KeyColumns []string `json:"key_columns"`
	Columns    []string `json:"columns"`
	// Pairs lists the chunk's rows as base64 of 12-byte pairs (the first 6
	// bytes of the SHA-256 of the key's canonical JSON, then of the row's);
	// absent for a table without a primary key.
	Pairs       *string `json:"pairs,omitempty"`
	TotalRows   *int64  `json:"total_rows,omitempty"`
	TotalDigest string  `json:"total_digest,omitempty"`
}

// checkpoint turns an authorised checkpoint message into a CHECKPOINT event
// of the table's watch, at the message's place in commit order.
func (s *Stream) checkpoint(lsn pgoutput.LSN, m *pgoutput.LogicalMessage, emit func(Item) error) error {
	s.seq++
	var cp CheckpointMessage
	if err := json.Unmarshal(m.Content, &cp); err != nil {
		return emit(Item{Kind: ItemNotice, Notice: fmt.Sprintf("ignoring a malformed checkpoint message at %s: %v", lsn, err)})
	}
	if !s.useControlAuth("checkpoint", cp.TableOID, m.Content) {
		return emit(Item{Kind: ItemRejectedControl, Prefix: m.Prefix,
			Notice: fmt.Sprintf("ignored a checkpoint for table OID %d without an authorising pgaudit_cdc.control row (xid %d, at %s): no CHECKPOINT event was produced", cp.TableOID, s.begin.Xid, lsn)})
	}
	w, ok := s.watchFor(cp.TableOID, cp.Schema)
	if !ok {
		return nil
	}
	rel := &pgoutput.RelationMessage{ID: cp.TableOID, Namespace: cp.Schema, Name: cp.Table}
	ev := s.newEvent(lsn, ident.Qualified(rel.Namespace, rel.Name), w, envelope.OpCheckpoint)
	if err := ev.SetCheckpoint(checkpointField(cp)); err != nil {
		return fmt.Errorf("BUG: %w", err)
	}
	return emit(Item{Kind: ItemEvent, Event: ev})
}

// checkpointField is what a CHECKPOINT event says of the message cp: the
// chunk's number and last mark only for a chunked checkpoint, its totals
// only on the last chunk.
func checkpointField(cp CheckpointMessage) envelope.Checkpoint {
	f := envelope.Checkpoint{ID: cp.ID, Rows: cp.Rows, Digest: cp.Digest,
		KeyColumns: cp.KeyColumns, Columns: cp.Columns, Pairs: cp.Pairs}
	if cp.Chunk > 0 {
		f.Chunk, f.Last = cp.Chunk, &cp.Last
	}
	if cp.Last && cp.TotalRows != nil {
		f.TotalRows, f.TotalDigest = cp.TotalRows, &cp.TotalDigest
	}
	return f
}
