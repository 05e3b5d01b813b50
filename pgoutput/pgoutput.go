package pgoutput

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrMalformedMessage is wrapped by every Parse error: the bytes are not a
// pgoutput message this package understands.
var ErrMalformedMessage = errors.New("malformed pgoutput message")

// Message is one parsed pgoutput message.
type Message interface {
	// Type is the message's tag byte ('B', 'C', 'R', ...).
	Type() byte
}

// BeginMessage starts a transaction. pgoutput (protocol 1) only sends
// committed transactions, whole, in commit order.
type BeginMessage struct {
	FinalLSN   LSN   // the commit record's LSN
	CommitTime int64 // microseconds since 2000-01-01 UTC
	Xid        uint32
}

// CommitMessage ends a transaction.
type CommitMessage struct {
	Flags      uint8
	CommitLSN  LSN
	EndLSN     LSN // end of the commit record: what is confirmed to the server once delivered
	CommitTime int64
}

// OriginMessage names the replication origin a transaction came from.
type OriginMessage struct {
	CommitLSN LSN
	Name      string
}

// RelationColumn is one column of a RelationMessage.
type RelationColumn struct {
	Flags   uint8 // 1: part of the replica identity key
	Name    string
	TypeOID uint32
	TypeMod int32
}

// RelationMessage describes a table before the first change to it in a
// session, and again whenever its definition changed.
type RelationMessage struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity byte // 'd' default, 'n' nothing, 'f' full, 'i' index
	Columns         []RelationColumn
}

// TypeMessage names a non-built-in type used by a following relation.
type TypeMessage struct {
	OID       uint32
	Namespace string
	Name      string
}

// Tuple column kinds, as sent on the wire.
const (
	TupleNull      = 'n'
	TupleUnchanged = 'u' // an unchanged TOASTed value that was not sent
	TupleText      = 't'
	TupleBinary    = 'b'
)

// TupleColumn is one column value of a tuple. Data aliases the buffer given to
// Parse.
type TupleColumn struct {
	Kind byte
	Data []byte
}

// Tuple is a row as sent by pgoutput.
type Tuple []TupleColumn

// InsertMessage is a row inserted.
type InsertMessage struct {
	RelationID uint32
	New        Tuple
}

// UpdateMessage is a row updated. OldKind is 0 when no old row was sent, 'K'
// when only the replica identity key was sent, 'O' for the whole old row
// (REPLICA IDENTITY FULL).
type UpdateMessage struct {
	RelationID uint32
	OldKind    byte
	Old        Tuple
	New        Tuple
}

// DeleteMessage is a row deleted; OldKind as for UpdateMessage.
type DeleteMessage struct {
	RelationID uint32
	OldKind    byte
	Old        Tuple
}

// Truncate options.
const (
	TruncateCascade         = 1
	TruncateRestartIdentity = 2
)

// TruncateMessage is one TRUNCATE statement covering one or more tables.
type TruncateMessage struct {
	Options     uint8
	RelationIDs []uint32
}

// LogicalMessage is the output of pg_logical_emit_message.
type LogicalMessage struct {
	Transactional bool
	LSN           LSN
	Prefix        string
	Content       []byte // aliases the buffer given to Parse
}

// StreamStartMessage opens a block of changes of an in-progress
// transaction (protocol version 2, streaming on). The messages up to the
// next StreamStopMessage belong to it: parse them with ParseStreamed.
type StreamStartMessage struct {
	Xid          uint32
	FirstSegment bool // the transaction's first block
}

// StreamStopMessage closes a block of streamed changes.
type StreamStopMessage struct{}

// StreamCommitMessage commits a streamed transaction: its changes, sent in
// earlier blocks, are delivered now, in commit order.
type StreamCommitMessage struct {
	Xid        uint32
	Flags      uint8
	CommitLSN  LSN // the commit record's LSN (a BEGIN's FinalLSN)
	EndLSN     LSN
	CommitTime int64
}

// StreamAbortMessage aborts a streamed transaction (SubXid == Xid) or one
// of its subtransactions: the changes sent under SubXid are discarded.
type StreamAbortMessage struct {
	Xid    uint32
	SubXid uint32
}

// Type implements Message.
func (*StreamStartMessage) Type() byte { return 'S' }

// Type implements Message.
func (*StreamStopMessage) Type() byte { return 'E' }

// Type implements Message.
func (*StreamCommitMessage) Type() byte { return 'c' }

// Type implements Message.
func (*StreamAbortMessage) Type() byte { return 'A' }

// Type implements Message.
func (*BeginMessage) Type() byte { return 'B' }

// Type implements Message.
func (*CommitMessage) Type() byte { return 'C' }

// Type implements Message.
func (*OriginMessage) Type() byte { return 'O' }

// Type implements Message.
func (*RelationMessage) Type() byte { return 'R' }

// Type implements Message.
func (*TypeMessage) Type() byte { return 'Y' }

// Type implements Message.
func (*InsertMessage) Type() byte { return 'I' }

// Type implements Message.
func (*UpdateMessage) Type() byte { return 'U' }

// Type implements Message.
func (*DeleteMessage) Type() byte { return 'D' }

// Type implements Message.
func (*TruncateMessage) Type() byte { return 'T' }

// Type implements Message.
func (*LogicalMessage) Type() byte { return 'M' }

// pgEpoch is 2000-01-01 UTC, the zero of PostgreSQL timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// PGTime converts a PostgreSQL timestamp (microseconds since 2000-01-01 UTC)
// to a time.Time in UTC.
func PGTime(micros int64) time.Time {
	return pgEpoch.Add(time.Duration(micros) * time.Microsecond)
}

// reader walks a message with bounds checks; the first failure sticks.
type reader struct {
	buf []byte
	off int
	err error
	p   *Parser // reused memory, or nil
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated at byte %d reading %s", ErrMalformedMessage, r.off, what)
	}
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.buf)-r.off < n {
		r.fail(what)
		return nil
	}
	b := r.buf[r.off : r.off+n : r.off+n]
	r.off += n
	return b
}

func (r *reader) u8(what string) uint8 {
	b := r.take(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16(what string) uint16 {
	b := r.take(2, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) u32(what string) uint32 {
	b := r.take(4, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (r *reader) u64(what string) uint64 {
	b := r.take(8, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// cstring reads a NUL-terminated string and copies it.
func (r *reader) cstring(what string) string {
	if r.err != nil {
		return ""
	}
	for i := r.off; i < len(r.buf); i++ {
		if r.buf[i] == 0 {
			s := string(r.buf[r.off:i])
			r.off = i + 1
			return s
		}
	}
	r.fail(what)
	return ""
}

func (r *reader) tuple() Tuple {
	n := int(r.u16("tuple column count"))
	if r.err != nil {
		return nil
	}
	// Each column needs at least one byte: refuse counts the buffer cannot hold
	// before allocating for them.
	if n > len(r.buf)-r.off {
		r.fail("tuple columns")
		return nil
	}
	var t Tuple
	if r.p != nil {
		start := len(r.p.cols)
		r.p.cols = append(r.p.cols, make([]TupleColumn, n)...)
		t = r.p.cols[start : start+n : start+n]
	} else {
		t = make(Tuple, n)
	}
	for i := range t {
		kind := r.u8("tuple column kind")
		switch kind {
		case TupleNull, TupleUnchanged:
			t[i].Kind = kind
		case TupleText, TupleBinary:
			l := r.u32("tuple column length")
			if l > uint32(len(r.buf)) {
				r.fail("tuple column data")
				return nil
			}
			t[i] = TupleColumn{Kind: kind, Data: r.take(int(l), "tuple column data")}
		default:
			if r.err == nil {
				r.err = fmt.Errorf("%w: unknown tuple column kind %q at byte %d", ErrMalformedMessage, kind, r.off-1)
			}
		}
		if r.err != nil {
			return nil
		}
	}
	return t
}

// Parse decodes one pgoutput message (protocol version 1, with logical
// messages, and the stream control messages of version 2). It never panics: short or inconsistent input gives an error
// wrapping ErrMalformedMessage. Tuple data and message content alias data;
// names are copied.
//
// Protocol: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
func Parse(data []byte) (Message, error) {
	_, m, err := parse(data, nil, false)
	return m, err
}

// StreamedXid returns the transaction of a message sent inside a stream
// block (between STREAM START and STREAM STOP), without parsing the rest:
// the (sub)transaction that made the change. ok is false for a message
// that carries none (ORIGIN, or one too short to).
func StreamedXid(data []byte) (xid uint32, ok bool) {
	if len(data) < 5 || !carriesXid(data[0]) {
		return 0, false
	}
	return binary.BigEndian.Uint32(data[1:5]), true
}

// carriesXid says whether a message of type tag names its transaction
// when sent inside a stream block.
func carriesXid(tag byte) bool {
	switch tag {
	case 'R', 'Y', 'I', 'U', 'D', 'T', 'M':
		return true
	}
	return false
}

// Parser is Parse with its memory reused: the BEGIN, COMMIT, INSERT, UPDATE
// and DELETE messages it returns, and their tuples, are valid only until its
// next call. The replication stream parses one message at a time and is done
// with it before the next (decode.Stream.Apply copies what it keeps), so the
// per-change allocations of a busy stream need not be made at all.
type Parser struct {
	begin  BeginMessage
	commit CommitMessage
	insert InsertMessage
	update UpdateMessage
	delete DeleteMessage
	cols   []TupleColumn
}

// Parse decodes one message as the package's Parse does.
func (p *Parser) Parse(data []byte) (Message, error) {
	p.reset()
	_, m, err := parse(data, p, false)
	return m, err
}

// ParseStreamed decodes a message sent inside a stream block: the same
// messages as Parse, with the transaction (xid) that RELATION, TYPE,
// INSERT, UPDATE, DELETE, TRUNCATE and logical messages carry there. The
// message returned is the one the same change gives outside a stream.
func (p *Parser) ParseStreamed(data []byte) (xid uint32, m Message, err error) {
	p.reset()
	return parse(data, p, true)
}

func (p *Parser) reset() {
	if cap(p.cols) > 1<<12 {
		p.cols = nil // one very wide row keeps no memory for ever
	}
	clear(p.cols)
	p.cols = p.cols[:0]
}

// The messages parse fills: the Parser's own, or new ones when p is nil.
func (p *Parser) beginMsg() *BeginMessage {
	if p == nil {
		return new(BeginMessage)
	}
	return &p.begin
}

func (p *Parser) commitMsg() *CommitMessage {
	if p == nil {
		return new(CommitMessage)
	}
	return &p.commit
}

func (p *Parser) insertMsg() *InsertMessage {
	if p == nil {
		return new(InsertMessage)
	}
	return &p.insert
}

func (p *Parser) updateMsg() *UpdateMessage {
	if p == nil {
		return new(UpdateMessage)
	}
	return &p.update
}

func (p *Parser) deleteMsg() *DeleteMessage {
	if p == nil {
		return new(DeleteMessage)
	}
	return &p.delete
}

func parse(data []byte, p *Parser, streamed bool) (xid uint32, m Message, err error) {
	if len(data) == 0 {
		return 0, nil, fmt.Errorf("%w: empty message", ErrMalformedMessage)
	}
	r := reader{buf: data, off: 1, p: p}
	if streamed && carriesXid(data[0]) {
		xid = r.u32("xid")
	}
	switch data[0] {
	case 'B':
		m = r.begin()
	case 'C':
		m = r.commit()
	case 'S':
		m = &StreamStartMessage{Xid: r.u32("xid"), FirstSegment: r.u8("first segment") == 1}
	case 'E':
		m = &StreamStopMessage{}
	case 'c':
		m = &StreamCommitMessage{
			Xid:        r.u32("xid"),
			Flags:      r.u8("flags"),
			CommitLSN:  LSN(r.u64("commit LSN")),
			EndLSN:     LSN(r.u64("end LSN")),
			CommitTime: int64(r.u64("commit time")),
		}
	case 'A':
		m = &StreamAbortMessage{Xid: r.u32("xid"), SubXid: r.u32("subtransaction xid")}
	case 'O':
		m = &OriginMessage{CommitLSN: LSN(r.u64("origin LSN")), Name: r.cstring("origin name")}
	case 'R':
		m = r.relation()
	case 'Y':
		m = &TypeMessage{OID: r.u32("type oid"), Namespace: r.cstring("type namespace"), Name: r.cstring("type name")}
	case 'I':
		m = r.insert()
	case 'U':
		m = r.update()
	case 'D':
		m = r.delete()
	case 'T':
		m = r.truncate()
	case 'M':
		m = r.message()
	default:
		return 0, nil, fmt.Errorf("%w: unsupported message type %q", ErrMalformedMessage, data[0])
	}
	if r.err != nil {
		return 0, nil, r.err
	}
	if r.off != len(data) {
		return 0, nil, fmt.Errorf("%w: %d trailing bytes after %q message", ErrMalformedMessage, len(data)-r.off, data[0])
	}
	return xid, m, nil
}

func (r *reader) begin() *BeginMessage {
	b := r.p.beginMsg()
	*b = BeginMessage{
		FinalLSN:   LSN(r.u64("final LSN")),
		CommitTime: int64(r.u64("commit time")),
		Xid:        r.u32("xid"),
	}
	return b
}

func (r *reader) commit() *CommitMessage {
	c := r.p.commitMsg()
	*c = CommitMessage{
		Flags:      r.u8("flags"),
		CommitLSN:  LSN(r.u64("commit LSN")),
		EndLSN:     LSN(r.u64("end LSN")),
		CommitTime: int64(r.u64("commit time")),
	}
	return c
}

func (r *reader) relation() *RelationMessage {
	rel := &RelationMessage{
		ID:              r.u32("relation id"),
		Namespace:       r.cstring("namespace"),
		Name:            r.cstring("relation name"),
		ReplicaIdentity: r.u8("replica identity"),
	}
	n := int(r.u16("column count"))
	if r.err == nil && n > len(r.buf)-r.off {
		r.fail("columns")
	}
	if r.err == nil {
		rel.Columns = make([]RelationColumn, n)
		for i := range rel.Columns {
			rel.Columns[i] = RelationColumn{
				Flags:   r.u8("column flags"),
				Name:    r.cstring("column name"),
				TypeOID: r.u32("column type"),
				TypeMod: int32(r.u32("column type modifier")),
			}
		}
	}
	return rel
}

// tag reads a tuple's tag and fails unless it is one of want.
func (r *reader) tag(msg string, want ...byte) byte {
	tag := r.u8("tuple tag")
	if r.err == nil && !slices.Contains(want, tag) {
		r.err = fmt.Errorf("%w: %s: unexpected tuple tag %q", ErrMalformedMessage, msg, tag)
	}
	return tag
}

func (r *reader) insert() *InsertMessage {
	ins := r.p.insertMsg()
	*ins = InsertMessage{RelationID: r.u32("relation id")}
	r.tag("insert", 'N')
	ins.New = r.tuple()
	return ins
}

func (r *reader) update() *UpdateMessage {
	up := r.p.updateMsg()
	*up = UpdateMessage{RelationID: r.u32("relation id")}
	if tag := r.tag("update", 'K', 'O', 'N'); tag == 'K' || tag == 'O' {
		up.OldKind = tag
		up.Old = r.tuple()
		r.tag("update", 'N')
	}
	up.New = r.tuple()
	return up
}

func (r *reader) delete() *DeleteMessage {
	del := r.p.deleteMsg()
	*del = DeleteMessage{RelationID: r.u32("relation id")}
	del.OldKind = r.tag("delete", 'K', 'O')
	del.Old = r.tuple()
	return del
}

func (r *reader) truncate() *TruncateMessage {
	n := int(r.u32("relation count"))
	tr := &TruncateMessage{Options: r.u8("options")}
	if r.err == nil && (n < 0 || n > (len(r.buf)-r.off)/4) {
		r.fail("relation ids")
	}
	if r.err == nil {
		tr.RelationIDs = make([]uint32, n)
		for i := range tr.RelationIDs {
			tr.RelationIDs[i] = r.u32("relation id")
		}
	}
	return tr
}

func (r *reader) message() *LogicalMessage {
	lm := &LogicalMessage{}
	lm.Transactional = r.u8("flags")&1 == 1
	lm.LSN = LSN(r.u64("message LSN"))
	lm.Prefix = r.cstring("prefix")
	l := r.u32("content length")
	if r.err == nil && l > uint32(len(r.buf)) {
		r.fail("content")
	}
	lm.Content = r.take(int(l), "content")
	return lm
}
