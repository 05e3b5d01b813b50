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
	parseErr := func(reason string) *tsError {
		return &tsError{typ: "datetime_from_date_parsing", reason: reason}
	}
	extra := parseErr("unexpected extra characters at the end of the input")
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
	date := fmt.Sprintf("%04d-%02d-%02d", year, month, day)
	if len(s) == 10 {
		return date + "T00:00:00", nil
	}
	switch s[10] {
	case 'T', 't', ' ', '_':
	default:
		return "", extra
	}
	i := 11
	hour, ok := digitsAt(s, i, 2)
	if !ok || i+2 >= len(s) || s[i+2] != ':' {
		return "", extra
	}
	minute, ok := digitsAt(s, i+3, 2)
	if !ok {
		return "", extra
	}
	i += 5
	second, micro := 0, 0
	if i < len(s) && s[i] == ':' {
		if second, ok = digitsAt(s, i+1, 2); !ok {
			return "", extra
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
				return "", extra
			}
			for ; n < 6; n++ {
				micro *= 10
			}
		}
	}
	if hour > 23 || minute > 59 || second > 59 {
		return "", extra
	}
	out := fmt.Sprintf("%sT%02d:%02d:%02d", date, hour, minute, second)
	if micro != 0 {
		out += fmt.Sprintf(".%06d", micro)
	}
	if i == len(s) {
		return out, nil // naive datetime
	}
	switch s[i] {
	case 'Z', 'z':
		i++
		out += "+00:00"
	case '+', '-':
		sign := s[i]
		oh, ok := digitsAt(s, i+1, 2)
		if !ok {
			return "", extra
		}
		i += 3
		if i < len(s) && s[i] == ':' {
			i++
		}
		om, ok := digitsAt(s, i, 2)
		if !ok {
			return "", extra
		}
		i += 2
		if oh > 23 || om > 59 {
			return "", extra
		}
		if oh == 0 && om == 0 {
			sign = '+'
		}
		out += fmt.Sprintf("%c%02d:%02d", sign, oh, om)
	default:
		return "", extra
	}
	if i != len(s) {
		return "", extra
	}
	return out, nil
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
