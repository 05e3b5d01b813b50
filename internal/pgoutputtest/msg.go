package pgoutputtest

import "encoding/binary"

// Msg is a message being built: each method appends one field.
type Msg []byte

// New starts a message with its tag byte ('B', 'I', ...).
func New(tag byte) Msg { return Msg{tag} }

// Col starts a tuple column, for Tuple.
func Col() Msg { return Msg{} }

// U8 appends a byte.
func (m Msg) U8(v uint8) Msg { return append(m, v) }

// U16 appends a big-endian 16-bit integer.
func (m Msg) U16(v uint16) Msg { return binary.BigEndian.AppendUint16(m, v) }

// U32 appends a big-endian 32-bit integer.
func (m Msg) U32(v uint32) Msg { return binary.BigEndian.AppendUint32(m, v) }

// U64 appends a big-endian 64-bit integer.
func (m Msg) U64(v uint64) Msg { return binary.BigEndian.AppendUint64(m, v) }

// Str appends a NUL-terminated string.
func (m Msg) Str(s string) Msg { return append(append(m, s...), 0) }

// Text appends a text tuple column.
func (m Msg) Text(s string) Msg { return append(m.U8('t').U32(uint32(len(s))), s...) }

// Null appends a NULL tuple column.
func (m Msg) Null() Msg { return m.U8('n') }

// Unchanged appends an unchanged TOASTed tuple column.
func (m Msg) Unchanged() Msg { return m.U8('u') }

// Tuple appends a tuple of the given columns.
func (m Msg) Tuple(cols ...Msg) Msg {
	m = m.U16(uint16(len(cols)))
	for _, c := range cols {
		m = append(m, c...)
	}
	return m
}

// Begin is a BEGIN message; its commit time is 2026-11-14 19:33:20 UTC.
func Begin(final uint64, xid uint32) Msg {
	return New('B').U64(final).U64(848_000_000_000_000).U32(xid)
}

// Commit is a COMMIT message with the same commit time as Begin's.
func Commit(commit, end uint64) Msg {
	return New('C').U8(0).U64(commit).U64(end).U64(848_000_000_000_000)
}

// Relation describes public.decisions(id int4 key, status text, body text),
// with REPLICA IDENTITY FULL.
func Relation(id uint32) Msg {
	return New('R').U32(id).Str("public").Str("decisions").U8('f').U16(3).
		U8(1).Str("id").U32(23).U32(0xffffffff).
		U8(0).Str("status").U32(25).U32(0xffffffff).
		U8(0).Str("body").U32(25).U32(0xffffffff)
}
