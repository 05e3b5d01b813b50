package spinetest

import (
	"fmt"
	"time"
)

// nowLayout is how the spine stamps an event that arrives without a
// timestamp: UTC, seconds precision, Python's isoformat with an offset.
const nowLayout = "2006-01-02T15:04:05+00:00"

// tsError is a timestamp the spine's datetime field would refuse, with the
// pydantic error type and the reason pydantic gives.
type tsError struct {
	typ    string // datetime_from_date_parsing or datetime_parsing
	reason string
}

// normalizeTimestamp parses s the way the spine's pydantic datetime field
// does for ISO 8601 text and returns Python's datetime.isoformat() of the
// result, which is what the spine stores and hashes:
//
//	2026-11-22T10:00:00Z            -> 2026-11-22T10:00:00+00:00
//	2026-11-22 10:00:00.5+0100      -> 2026-11-22T10:00:00.500000+01:00
//	2026-11-22T10:00:00.123456789Z  -> 2026-11-22T10:00:00.123456+00:00 (truncated)
//	2026-11-22                      -> 2026-11-22T00:00:00 (naive)
//	2026-11-22T10:00                -> 2026-11-22T10:00:00 (naive)
//
// A string already in isoformat with an offset comes back unchanged.
// Accepted grammar: YYYY-MM-DD, optionally followed by one of "T", "t", " ",
// "_" and HH:MM[:SS[(.|,)fraction]] and an optional zone Z, z, ±HH:MM or
// ±HHMM. The unix-timestamp strings pydantic also accepts ("1700000000") are
// refused here: the double is deliberately stricter than the spine there.
func normalizeTimestamp(s string) (string, *tsError) {
	date, err := parseDate(s)
	if err != nil {
		return "", err
	}
	if len(s) == 10 {
		return date + "T00:00:00", nil
	}
	extra := &tsError{typ: "datetime_from_date_parsing", reason: "unexpected extra characters at the end of the input"}
	switch s[10] {
	case 'T', 't', ' ', '_':
	default:
		return "", extra
	}
	clock, i, ok := parseClock(s, 11)
	if !ok {
		return "", extra
	}
	out := date + "T" + clock
	if i == len(s) {
		return out, nil // naive datetime
	}
	zone, ok := parseZone(s[i:])
	if !ok {
		return "", extra
	}
	return out + zone, nil
}

// parseDate reads the YYYY-MM-DD that s starts with.
func parseDate(s string) (string, *tsError) {
	parseErr := func(reason string) *tsError {
		return &tsError{typ: "datetime_from_date_parsing", reason: reason}
	}
	if len(s) < 10 {
		return "", parseErr("input is too short")
	}
	year, ok := digitsAt(s, 0, 4)
	if !ok {
		return "", parseErr("invalid character in year")
	}
	if s[4] != '-' {
		return "", parseErr("invalid date separator, expected `-`")
	}
	month, ok := digitsAt(s, 5, 2)
	if !ok {
		return "", parseErr("invalid character in month")
	}
	if s[7] != '-' {
		return "", parseErr("invalid date separator, expected `-`")
	}
	day, ok := digitsAt(s, 8, 2)
	if !ok {
		return "", parseErr("invalid character in day")
	}
	if month < 1 || month > 12 {
		return "", parseErr("month value is outside expected range")
	}
	if day < 1 || day > daysIn(year, month) {
		return "", parseErr("day value is outside expected range")
	}
	if year == 0 {
		return "", &tsError{typ: "datetime_parsing", reason: "year 0 is out of range"}
	}
	return fmt.Sprintf("%04d-%02d-%02d", year, month, day), nil
}

// parseClock reads HH:MM[:SS[(.|,)fraction]] from s[i:] as HH:MM:SS and
// microseconds when not zero (a longer fraction is truncated), and returns
// the index after it.
func parseClock(s string, i int) (string, int, bool) {
	hour, ok := digitsAt(s, i, 2)
	if !ok || i+2 >= len(s) || s[i+2] != ':' {
		return "", i, false
	}
	minute, ok := digitsAt(s, i+3, 2)
	if !ok {
		return "", i, false
	}
	i += 5
	second, micro := 0, 0
	if i < len(s) && s[i] == ':' {
		if second, ok = digitsAt(s, i+1, 2); !ok {
			return "", i, false
		}
		i += 3
		if i < len(s) && (s[i] == '.' || s[i] == ',') {
			i++
			n := 0
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				if n < 6 {
					micro = micro*10 + int(s[i]-'0')
				}
				n++
				i++
			}
			if n == 0 {
				return "", i, false
			}
			for ; n < 6; n++ {
				micro *= 10
			}
		}
	}
	if hour > 23 || minute > 59 || second > 59 {
		return "", i, false
	}
	out := fmt.Sprintf("%02d:%02d:%02d", hour, minute, second)
	if micro != 0 {
		out += fmt.Sprintf(".%06d", micro)
	}
	return out, i, true
}

// parseZone reads a zone that is the whole of s: Z, z, ±HH:MM or ±HHMM,
// as ±HH:MM (-00:00 as +00:00).
func parseZone(s string) (string, bool) {
	switch s[0] {
	case 'Z', 'z':
		return "+00:00", len(s) == 1
	case '+', '-':
	default:
		return "", false
	}
	sign := s[0]
	oh, ok := digitsAt(s, 1, 2)
	if !ok {
		return "", false
	}
	i := 3
	if i < len(s) && s[i] == ':' {
		i++
	}
	om, ok := digitsAt(s, i, 2)
	if !ok || i+2 != len(s) || oh > 23 || om > 59 {
		return "", false
	}
	if oh == 0 && om == 0 {
		sign = '+'
	}
	return fmt.Sprintf("%c%02d:%02d", sign, oh, om), true
}

// digitsAt parses the n ASCII digits of s starting at i.
func digitsAt(s string, i, n int) (int, bool) {
	if i < 0 || i+n > len(s) {
		return 0, false
	}
	v := 0
	for _, c := range []byte(s[i : i+n]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, true
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
