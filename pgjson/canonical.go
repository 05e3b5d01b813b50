package pgjson

import (
	"cmp"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// errCanonical is returned for text canonicalJSON cannot read; appendJSON
// then writes the text as a string.
var errCanonical = errors.New("not canonicalisable JSON")

// canonicalJSON appends the JSON text (one value; whitespace between tokens
// allowed) to dst in the spine's canonical form, checking the grammar as it
// goes: object members sorted by key (the last
// of duplicate keys kept, as Python's json module does), strings with ASCII
// escapes, integers as written ("-0" as 0), other numbers as Python's float
// repr. It works on the bytes, without building Go values: a jsonb column
// is canonicalised on every event, so this is on the hot path.
func canonicalJSON(dst, text []byte) ([]byte, error) {
	out, i, err := canonValue(dst, text, 0, 0)
	if err != nil {
		return dst, err
	}
	if skipWS(text, i) != len(text) {
		return dst, errCanonical
	}
	return out, nil
}

// skipWS returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipWS(s []byte, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// canonValue writes the value at s[i] (after whitespace), nested depth
// arrays and objects deep.
func canonValue(dst, s []byte, i, depth int) ([]byte, int, error) {
	i = skipWS(s, i)
	if i >= len(s) {
		return dst, i, errCanonical
	}
	switch c := s[i]; {
	case c == '{', c == '[':
		if depth >= maxJSONDepth {
			return dst, i, errCanonical
		}
		if c == '{' {
			return canonObject(dst, s, i, depth+1)
		}
		return canonArray(dst, s, i, depth+1)
	case c == '"':
		if end, ok := plainString(s, i); ok {
			return append(dst, s[i:end]...), end, nil
		}
		str, next, err := jsonString(s, i)
		if err != nil {
			return dst, i, err
		}
		return AppendString(dst, str), next, nil
	case c == 't':
		return literal(dst, s, i, "true")
	case c == 'f':
		return literal(dst, s, i, "false")
	case c == 'n':
		return literal(dst, s, i, "null")
	default:
		return canonNumber(dst, s, i)
	}
}

func literal(dst, s []byte, i int, lit string) ([]byte, int, error) {
	if len(s)-i < len(lit) || string(s[i:i+len(lit)]) != lit {
		return dst, i, errCanonical
	}
	return append(dst, lit...), i + len(lit), nil
}

func canonArray(dst, s []byte, i, depth int) ([]byte, int, error) {
	dst = append(dst, '[')
	i = skipWS(s, i+1)
	if i < len(s) && s[i] == ']' {
		return append(dst, ']'), i + 1, nil
	}
	for {
		var err error
		if dst, i, err = canonValue(dst, s, i, depth); err != nil {
			return dst, i, err
		}
		i = skipWS(s, i)
		if i >= len(s) {
			return dst, i, errCanonical
		}
		switch s[i] {
		case ',':
			dst = append(dst, ',')
			i++
		case ']':
			return append(dst, ']'), i + 1, nil
		default:
			return dst, i, errCanonical
		}
	}
}

// member is one object member: its key, decoded, and where its
// "key":value segment was written in dst.
type member struct {
	key      []byte
	from, to int
}

// canonObject writes the members as they come, each as "key":value with
// its value canonical, and only reorders the written segments when the keys
// were not in order already (or repeat): most objects then cost no copy.
func canonObject(dst, s []byte, i, depth int) ([]byte, int, error) {
	i = skipWS(s, i+1)
	if i < len(s) && s[i] == '}' {
		return append(dst, "{}"...), i + 1, nil
	}
	start := len(dst)
	dst = append(dst, '{')
	var stack [16]member
	members := stack[:0]
	sorted := true
	for {
		if i >= len(s) || s[i] != '"' {
			return dst, i, errCanonical
		}
		if len(members) > 0 {
			dst = append(dst, ',')
		}
		from := len(dst)
		var key []byte
		if end, ok := plainString(s, i); ok {
			key = s[i+1 : end-1]
			dst = append(dst, s[i:end]...)
			i = end
		} else {
			var err error
			if key, i, err = jsonString(s, i); err != nil {
				return dst, i, err
			}
			dst = AppendString(dst, key)
		}
		if len(members) > 0 && string(members[len(members)-1].key) >= string(key) {
			sorted = false
		}
		i = skipWS(s, i)
		if i >= len(s) || s[i] != ':' {
			return dst, i, errCanonical
		}
		dst = append(dst, ':')
		var err error
		if dst, i, err = canonValue(dst, s, i+1, depth); err != nil {
			return dst, i, err
		}
		members = append(members, member{key: key, from: from, to: len(dst)})
		i = skipWS(s, i)
		if i >= len(s) {
			return dst, i, errCanonical
		}
		if s[i] == '}' {
			i++
			break
		}
		if s[i] != ',' {
			return dst, i, errCanonical
		}
		i = skipWS(s, i+1)
	}
	if sorted {
		return append(dst, '}'), i, nil
	}
	// Sorted by key (UTF-8 byte order is code point order); of equal keys
	// the last one written wins, as in a Python dict.
	var tmp [512]byte // most objects fit: no allocation
	written := append(tmp[:0], dst[start:]...)
	slices.SortStableFunc(members, func(a, b member) int { return cmp.Compare(string(a.key), string(b.key)) })
	dst = append(dst[:start], '{')
	first := true
	for k, m := range members {
		if k+1 < len(members) && string(members[k+1].key) == string(m.key) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, written[m.from-start:m.to-start]...)
	}
	return append(dst, '}'), i, nil
}

// plainString says whether the JSON string starting at s[i] (a '"') is
// already in canonical form, printable ASCII that needs no escape and has
// none, and if so, the index after its closing quote. Most keys and values
// are: they are then copied as they are, in one pass, instead of being
// decoded and escaped again.
func plainString(s []byte, i int) (int, bool) {
	i++
	for i+8 <= len(s) && wordSafe(binary.LittleEndian.Uint64(s[i:])) {
		i += 8
	}
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return i + 1, true
		case c >= utf8.RuneSelf || !noEscape[c]:
			return 0, false
		}
	}
	return 0, false
}

// jsonString decodes the JSON string starting at s[i] (a '"'): its UTF-8
// bytes, and the index after its closing quote. Without escapes the bytes
// are a sub-slice of s.
func jsonString(s []byte, i int) ([]byte, int, error) {
	i++
	start := i
	for i < len(s) && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20 {
		i++
	}
	if i >= len(s) {
		return nil, i, errCanonical
	}
	if s[i] == '"' {
		return s[start:i], i + 1, nil
	}
	out := append([]byte(nil), s[start:i]...)
	for i < len(s) {
		c := s[i]
		switch {
		case c < 0x20:
			return nil, i, errCanonical // a control character must be escaped
		case c == '"':
			return out, i + 1, nil
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(s) {
			return nil, i, errCanonical
		}
		switch e := s[i+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, n, ok := unicodeEscape(s, i)
			if !ok {
				return nil, i, errCanonical
			}
			out = utf8.AppendRune(out, r)
			i += n
			continue
		default:
			return nil, i, errCanonical
		}
		i += 2
	}
	return nil, i, errCanonical
}

// unicodeEscape reads \uXXXX at s[i] (and a low surrogate's \uXXXX after a
// high one): the rune and how many bytes it took. A lone surrogate reads as
// U+FFFD, as encoding/json reads it.
func unicodeEscape(s []byte, i int) (rune, int, bool) {
	r, ok := hex4(s, i+2)
	if !ok {
		return 0, 0, false
	}
	if utf16.IsSurrogate(r) {
		if r2, ok := hex4(s, i+8); ok && i+7 < len(s) && s[i+6] == '\\' && s[i+7] == 'u' {
			if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
				return dec, 12, true
			}
		}
		return utf8.RuneError, 6, true
	}
	return r, 6, true
}

func hex4(s []byte, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range s[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// canonNumber writes the number at s[i]: an integer literal as written
// ("-0" as 0, a Python int), any other as Python's float repr.
func canonNumber(dst, s []byte, i int) ([]byte, int, error) {
	end, ok := scanJSONNumber(s, i)
	if !ok || end == i {
		return dst, i, errCanonical
	}
	lit := s[i:end]
	if !slices.ContainsFunc(lit, func(c byte) bool { return c == '.' || c == 'e' || c == 'E' }) {
		if string(lit) == "-0" {
			return append(dst, '0'), end, nil
		}
		return append(dst, lit...), end, nil
	}
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(lit), len(lit)), 64)
	if err != nil {
		// compactJSON refuses numbers beyond float64's range.
		return dst, i, errCanonical
	}
	return chain.AppendPythonFloat(dst, f), end, nil
}

// Canonical appends the JSON text (one value) in the spine's canonical form
// (see canonicalJSON) to dst; it fails on text that is not valid JSON.
func Canonical(dst, text []byte) ([]byte, error) {
	if !utf8.Valid(text) {
		return dst, errCanonical
	}
	return canonicalJSON(dst, text)
}
