package envelope

import (
	"cmp"
	"crypto/sha256"
	"slices"
	"strconv"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// Envelope is one PublishRequest as a value: kind, source, timestamp and a
// payload whose table, operation, rows and metadata have fields of their
// own. Encode writes it.
//
// Old, New, Annotations and the values of Fields are JSON already in
// canonical form (pgjson writes rows so; Canonical makes any other value
// so). Encode does not check them.
type Envelope struct {
	Kind      string
	Source    string
	Timestamp string // ISO 8601 (FormatTimestamp); the commit time of a change

	// payload
	Table     string  // as in payload.table (ident.Qualified)
	Operation string  // OpInsert, ..., OpGap
	Old, New  []byte  // the rows as JSON objects; nil when absent
	Fields    []Field // any other payload members (cascade, checkpoint, gap, ...)

	// payload.metadata
	CommitLSN       pgoutput.LSN
	LSN             pgoutput.LSN
	Xid             uint32
	HasXid          bool
	CommitTimestamp string // empty: absent
	Key             string // metadata.idempotency_key
	// Linked says the event takes part in the self-linked stream: it
	// carries prev (null when Prev is zero) and tx_index, and the last
	// event of its transaction tx_events.
	Linked           bool
	Prev             Position
	TxIndex          uint32
	TxEvents         uint32 // 0: not (known to be) the last of its transaction
	OldIsKeyOnly     bool
	Unavailable      []string // metadata.unavailable_columns
	Annotations      []byte   // a JSON object; nil: absent
	AnnotationsError string

	// Delivery marks: set when an event is sent out of commit order. They
	// describe the delivery, not the change, so the trail's digest of an
	// event leaves them out (see Unmarked).
	Late        bool // sent again after a later event landed
	Redelivered bool // a dead letter retried
	// Supersedes names an event another producer wrote under this event's
	// key with other content (a forgery the read-back found): the agent
	// delivers its own event anyway, and says which one it supersedes.
	Supersedes int64
}

// Field is one payload member besides table, operation, old, new and
// metadata. Value is canonical JSON.
type Field struct {
	Name  string
	Value []byte
}

// Operation names as they appear in payload.operation.
const (
	OpInsert   = "INSERT"
	OpUpdate   = "UPDATE"
	OpDelete   = "DELETE"
	OpTruncate = "TRUNCATE"
	OpRead     = "READ"    // a backfilled existing row
	OpSummary  = "SUMMARY" // the changes of a skipped transaction, counted
	OpWatch    = "WATCH"   // self-audit: a watch was created
	OpRewatch  = "REWATCH" // self-audit: a watch changed
	OpUnwatch  = "UNWATCH" // self-audit: a watch was removed
	OpDrop     = "DROP"    // self-audit: a watched table was dropped, which ends its watch
	OpAttach   = "ATTACH"  // self-audit: a table joined a watched partitioned table
	OpDetach   = "DETACH"  // self-audit: a table left a watched partitioned table (detached or dropped)
	// OpUnlogged is self-audit: a table under a watched partitioned table
	// was found UNLOGGED, so its changes for a while are not in the WAL.
	OpUnlogged = "UNLOGGED"
	// OpUnaudited is self-audit: a table under a watched partitioned table
	// was found without the trigger that audits its TRUNCATE (its owner
	// dropped or disabled it, or it could not be created), so a TRUNCATE of
	// it for a while is not in the trail.
	OpUnaudited = "UNAUDITED"
	// OpRewrite says that DDL rewrote a watched table's stored values
	// (ALTER COLUMN ... TYPE ... USING, ADD COLUMN with a volatile default):
	// no row event shows the new values.
	OpRewrite = "REWRITE"
	// OpCheckpoint is a digest of a table's rows at its place in commit order.
	OpCheckpoint = "CHECKPOINT"
	// OpGap records an accepted hole in the capture.
	OpGap = "GAP"
)

// SelfAuditKind and SelfAuditSource label the events pgaudit-cdc emits
// about itself (self-audit, gaps).
const (
	SelfAuditKind   = "other"
	SelfAuditSource = "pgaudit-cdc"
)

// Unmarked returns e without its delivery marks: the event as the change
// made it, which is what the trail digests.
func (e Envelope) Unmarked() Envelope {
	e.Late, e.Redelivered, e.Supersedes = false, false, 0
	return e
}

// Size is at least the encoded length of e when its strings need no
// escaping (TestSizeBoundsTheEncoding): positions and numbers count at their
// longest. Encode then writes e without growing its buffer (a growth copied
// the whole event again: 6 % of the agent's CPU with single-row
// transactions), and allocates little more than it writes.
func (e *Envelope) Size() int {
	const (
		lsn = 17           // XXXXXXXX/XXXXXXXX
		pos = lsn + 1 + 10 // LSN:seq
		u32 = 10
		i64 = 20
	)
	n := len(`{"kind":"","payload":{"metadata":{"commit_lsn":"","idempotency_key":"","lsn":""},"operation":"","table":""},"source":"","timestamp":""}`) +
		2*lsn + len(e.Kind) + len(e.Source) + len(e.Timestamp) + len(e.Table) + len(e.Operation) + len(e.Key)
	if e.Annotations != nil {
		n += len(`"annotations":,`) + len(e.Annotations)
	}
	if e.AnnotationsError != "" {
		n += len(`"annotations_error":"",`) + len(e.AnnotationsError)
	}
	if e.CommitTimestamp != "" {
		n += len(`,"commit_timestamp":""`) + len(e.CommitTimestamp)
	}
	if e.Late {
		n += len(`,"":true`) + len(MarkLate)
	}
	if e.OldIsKeyOnly {
		n += len(`,"old_is_key_only":true`)
	}
	if e.Linked {
		n += len(`,"prev":""`) + pos + len(`,"tx_index":`) + u32
	}
	if e.Redelivered {
		n += len(`,"":true`) + len(MarkRedelivered)
	}
	if e.Supersedes != 0 {
		n += len(`,"":`) + len(MarkSupersedes) + i64
	}
	if e.TxEvents > 0 {
		n += len(`,"tx_events":`) + u32
	}
	if len(e.Unavailable) > 0 {
		n += len(`,"unavailable_columns":[]`)
		for _, c := range e.Unavailable {
			n += len(c) + 3
		}
	}
	if e.HasXid {
		n += len(`,"xid":`) + u32
	}
	if e.New != nil {
		n += len(`,"new":`) + len(e.New)
	}
	if e.Old != nil {
		n += len(`,"old":`) + len(e.Old)
	}
	for _, f := range e.Fields {
		n += len(`,"":`) + len(f.Name) + len(f.Value)
	}
	return n
}

// Encode returns the canonical JSON of e in a buffer of its own.
func (e *Envelope) Encode() []byte {
	b, _ := e.appendJSON(make([]byte, 0, e.Size()))
	return b
}

// AppendJSON appends the canonical JSON of e to b: keys in sorted order at
// every level, as the spine's hash computes them.
func (e *Envelope) AppendJSON(b []byte) []byte {
	b, _ = e.appendJSON(b)
	return b
}

// spans says where appendJSON wrote the payload object and the rows in it
// (newAt, oldAt -1: not written).
type spans struct {
	payloadAt, payloadEnd int
	newAt, oldAt          int
}

// appendJSON is AppendJSON, also saying where the payload and the rows
// were written.
func (e *Envelope) appendJSON(b []byte) (_ []byte, at spans) {
	b = append(b, `{"kind":`...)
	b = pgjson.AppendText(b, e.Kind)
	b = append(b, `,"payload":`...)
	at.payloadAt = len(b)
	b = append(b, '{')
	b, at.newAt, at.oldAt = e.appendPayload(b)
	b = append(b, '}')
	at.payloadEnd = len(b)
	b = append(b, `,"source":`...)
	b = pgjson.AppendText(b, e.Source)
	b = append(b, `,"timestamp":`...)
	b = pgjson.AppendText(b, e.Timestamp)
	return append(b, '}'), at
}

// The payload members the envelope writes itself, in sorted order.
var fixedMembers = [...]string{"metadata", "new", "old", "operation", "table"}

// appendPayload writes the payload's members, fixed and extra, merged in
// sorted order, and says where the rows went.
func (e *Envelope) appendPayload(b []byte) (_ []byte, newAt, oldAt int) {
	newAt, oldAt = -1, -1
	fields := e.Fields
	if !slices.IsSortedFunc(fields, byName) {
		fields = slices.SortedFunc(slices.Values(fields), byName)
	}
	first := true
	sep := func(b []byte, name string) []byte {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = pgjson.AppendText(b, name)
		return append(b, ':')
	}
	fi := 0
	for _, name := range fixedMembers {
		for ; fi < len(fields) && fields[fi].Name < name; fi++ {
			b = append(sep(b, fields[fi].Name), fields[fi].Value...)
		}
		switch name {
		case "metadata":
			b = e.appendMetadata(sep(b, name))
		case "new":
			if e.New != nil {
				b = sep(b, name)
				newAt = len(b)
				b = append(b, e.New...)
			}
		case "old":
			if e.Old != nil {
				b = sep(b, name)
				oldAt = len(b)
				b = append(b, e.Old...)
			}
		case "operation":
			b = pgjson.AppendText(sep(b, name), e.Operation)
		case "table":
			b = pgjson.AppendText(sep(b, name), e.Table)
		}
	}
	for ; fi < len(fields); fi++ {
		b = append(sep(b, fields[fi].Name), fields[fi].Value...)
	}
	return b, newAt, oldAt
}

func byName(a, b Field) int { return cmp.Compare(a.Name, b.Name) }

// appendMetadata writes payload.metadata, its members in sorted order.
func (e *Envelope) appendMetadata(b []byte) []byte {
	b = append(b, '{')
	if e.Annotations != nil {
		b = append(b, `"annotations":`...)
		b = append(b, e.Annotations...)
		b = append(b, ',')
	}
	if e.AnnotationsError != "" {
		b = append(b, `"annotations_error":`...)
		b = pgjson.AppendText(b, e.AnnotationsError)
		b = append(b, ',')
	}
	b = append(b, `"commit_lsn":"`...)
	b = e.CommitLSN.AppendText(b)
	b = append(b, '"')
	if e.CommitTimestamp != "" {
		b = append(b, `,"commit_timestamp":`...)
		b = pgjson.AppendText(b, e.CommitTimestamp)
	}
	b = append(b, `,"idempotency_key":`...)
	b = pgjson.AppendText(b, e.Key)
	if e.Late {
		b = append(b, `,"`+MarkLate+`":true`...)
	}
	b = append(b, `,"lsn":"`...)
	b = e.LSN.AppendText(b)
	b = append(b, '"')
	if e.OldIsKeyOnly {
		b = append(b, `,"old_is_key_only":true`...)
	}
	if e.Linked {
		b = append(b, `,"prev":`...)
		if e.Prev.IsZero() {
			b = append(b, "null"...)
		} else {
			b = append(b, '"')
			b = e.Prev.AppendText(b)
			b = append(b, '"')
		}
	}
	if e.Redelivered {
		b = append(b, `,"`+MarkRedelivered+`":true`...)
	}
	if e.Supersedes != 0 {
		b = append(b, `,"`+MarkSupersedes+`":`...)
		b = strconv.AppendInt(b, e.Supersedes, 10)
	}
	if e.TxEvents > 0 {
		b = append(b, `,"tx_events":`...)
		b = strconv.AppendUint(b, uint64(e.TxEvents), 10)
	}
	if e.Linked {
		b = append(b, `,"tx_index":`...)
		b = strconv.AppendUint(b, uint64(e.TxIndex), 10)
	}
	if len(e.Unavailable) > 0 {
		b = append(b, `,"unavailable_columns":`...)
		b = AppendStrings(b, e.Unavailable)
	}
	if e.HasXid {
		b = append(b, `,"xid":`...)
		b = strconv.AppendUint(b, uint64(e.Xid), 10)
	}
	return append(b, '}')
}

// AppendStrings appends ss as a JSON array of strings.
func AppendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = pgjson.AppendText(b, s)
	}
	return append(b, ']')
}

// Event is one envelope ready to publish: the value, its encoding, and
// where it sits in commit order.
type Event struct {
	Envelope
	// Body is Envelope encoded. It is set by Finish and by the marks,
	// never edited.
	Body       []byte
	Pos        Position
	CommitTime time.Time

	// payloadAt and payloadEnd delimit the payload object in Body.
	payloadAt, payloadEnd int
	// inPlace holds rows built where Body will be (BuildRowsInPlace),
	// until Finish.
	inPlace *inPlace

	digest   [sha256.Size]byte
	digested bool
}

// Digest is the SHA-256 of the event as the change made it: its canonical
// JSON without delivery marks (Unmarked). A verifier computes the same from
// the spine's copy. It is computed once, by the goroutine that owns ev.
func (ev *Event) Digest() [sha256.Size]byte {
	if !ev.digested {
		if ev.Late || ev.Redelivered || ev.Supersedes != 0 || ev.Body == nil {
			u := ev.Unmarked()
			ev.digest = sha256.Sum256(u.Encode())
		} else {
			ev.digest = sha256.Sum256(ev.Body)
		}
		ev.digested = true
	}
	return ev.digest
}

// Finish encodes the envelope into Body. Call it once the envelope is
// complete; the marks call it again. Old and New then point into Body, so
// that the buffers they were built in can be reused.
func (ev *Event) Finish() {
	if ev.inPlace != nil && ev.finishInPlace() {
		return
	}
	var at spans
	ev.Body, at = ev.appendJSON(make([]byte, 0, ev.Size()))
	if at.newAt >= 0 {
		ev.New = ev.Body[at.newAt : at.newAt+len(ev.New) : at.newAt+len(ev.New)]
	}
	if at.oldAt >= 0 {
		ev.Old = ev.Body[at.oldAt : at.oldAt+len(ev.Old) : at.oldAt+len(ev.Old)]
	}
	ev.payloadAt, ev.payloadEnd = at.payloadAt, at.payloadEnd
}

// Payload is the canonical JSON of the event's payload object: a view into
// Body (set by Finish), not a copy. A destination that builds the stored
// event itself (package natsjs) hashes and sends it as it is.
func (ev *Event) Payload() []byte {
	return ev.Body[ev.payloadAt:ev.payloadEnd:ev.payloadEnd]
}

// MarkLate sets metadata.late and encodes the event again: it is sent
// after a later event landed.
func (ev *Event) MarkLate() {
	if !ev.Late {
		ev.Late = true
		ev.Finish()
	}
}

// MarkRedelivered sets metadata.redelivered and encodes the event again: a
// dead letter retried lands after newer events.
func (ev *Event) MarkRedelivered() {
	if !ev.Redelivered {
		ev.Redelivered = true
		ev.Finish()
	}
}
