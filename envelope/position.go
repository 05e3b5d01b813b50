package envelope

import (
	"strconv"
	"strings"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

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
	// One allocation, without fmt (hot path): the builder's buffer becomes
	// the string. The tail is the commit LSN as 16 upper-case hex digits, ':' and the
	// sequence (at most 10 digits).
	var tail [16 + 1 + 10]byte
	var k strings.Builder
	k.Grow(len(keyPrefix) + len(systemID) + 1 + len(slot) + 1 + len(tail))
	k.WriteString(keyPrefix)
	k.WriteString(systemID)
	k.WriteByte(':')
	k.WriteString(slot)
	k.WriteByte(':')
	const hexDigits = "0123456789ABCDEF"
	for i := range 16 {
		tail[i] = hexDigits[uint64(p.CommitLSN)>>(60-4*i)&0xF]
	}
	tail[16] = ':'
	k.Write(strconv.AppendUint(tail[:17], uint64(p.Seq), 10))
	return k.String()
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
