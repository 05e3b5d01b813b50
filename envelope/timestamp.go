package envelope

import "time"

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
