package pgoutput

import "fmt"

// LSN is a PostgreSQL write-ahead log position.
type LSN uint64

// String formats the LSN as PostgreSQL does ("16/B374D848"), so that logs
// can be matched with pg_replication_slots.
func (l LSN) String() string {
	return string(l.AppendText(make([]byte, 0, 17)))
}

// AppendText appends the String form without going through fmt: it is
// written twice into every envelope.
func (l LSN) AppendText(b []byte) []byte {
	b = appendHex(b, uint32(l>>32))
	b = append(b, '/')
	return appendHex(b, uint32(l))
}

// appendHex appends v in upper-case hexadecimal, without leading zeros.
func appendHex(b []byte, v uint32) []byte {
	const digits = "0123456789ABCDEF"
	var buf [8]byte
	i := len(buf)
	for {
		i--
		buf[i] = digits[v&0xF]
		v >>= 4
		if v == 0 {
			return append(b, buf[i:]...)
		}
	}
}

// ParseLSN parses the X/X form that String writes and PostgreSQL shows
// (pg_current_wal_lsn(), pg_replication_slots).
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("invalid LSN %q: %w", s, err)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}
