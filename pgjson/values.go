package pgjson

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// ErrMalformedValue is wrapped by AppendValue errors: the text is not a
// valid text form of the column's type.
var ErrMalformedValue = errors.New("malformed value")

const (
	// maxDepth caps the nesting of arrays and composites in one value
	// (each array dimension and each composite counts one level).
	maxDepth = 100
	// maxJSONDepth caps the nesting of an embedded json/jsonb value;
	// deeper documents are emitted as a JSON string so that consumers with
	// a recursion limit (Python's json allows about 1000) can read them.
	maxJSONDepth = 256
	// maxJSONIntDigits caps the digits of an integer literal inside an
	// embedded json/jsonb value; a document with a longer one is emitted as
	// a JSON string (Python refuses to parse integers of more than 4300
	// digits by default).
	maxJSONIntDigits = 4000
	// errTextMax is how much of a malformed value an error quotes.
	errTextMax = 48
)

// AppendValue appends the JSON form of one column value, given its text
// form, to dst. It never panics on any input; malformed text for a typed
// kind (e.g. "abc" for KindInteger, a broken array literal) returns an
// error wrapping ErrMalformedValue, and dst unchanged. A nil t is treated
// as KindText. It does not allocate when dst has enough capacity.
func AppendValue(dst []byte, t *Type, text []byte) ([]byte, error) {
	out, err := appendValue(dst, t, text, 0)
	if err != nil {
		return dst, err
	}
	return out, nil
}

// appendValue converts text at nesting depth depth (the number of arrays and
// composites enclosing it).
func appendValue(dst []byte, t *Type, text []byte, depth int) ([]byte, error) {
	if t == nil {
		return AppendString(dst, text), nil
	}
	switch t.Kind {
	case KindInteger:
		return appendInteger(dst, t, text)
	case KindFloat:
		return appendFloat(dst, t, text)
	case KindNumeric:
		return appendNumeric(dst, t, text)
	case KindBool:
		switch string(text) {
		case "t", "true":
			return append(dst, "true"...), nil
		case "f", "false":
			return append(dst, "false"...), nil
		}
		return dst, malformed(t, text, "not a boolean")
	case KindJSON:
		return appendJSON(dst, text), nil
	case KindTimestamp, KindTimestampTZ, KindDate, KindTime, KindTimeTZ:
		return appendDateTime(dst, t, text)
	case KindBytea:
		return appendBytea(dst, t, text)
	case KindArray:
		return appendArray(dst, t, text, depth)
	case KindComposite:
		return appendComposite(dst, t, text, depth)
	}
	return AppendString(dst, text), nil
}

// malformed builds an error wrapping ErrMalformedValue that quotes the start
// of the text.
func malformed(t *Type, text []byte, reason string) error {
	name := "text"
	if t != nil {
		name = t.Name
		if name == "" {
			name = fmt.Sprintf("oid %d", t.OID)
		}
	}
	more := ""
	if len(text) > errTextMax {
		text, more = text[:errTextMax], "..."
	}
	return fmt.Errorf("%w: %s: %s: %q%s", ErrMalformedValue, name, reason, text, more)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// skipDigits returns the index of the first non-digit at or after i.
func skipDigits(s []byte, i int) int {
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// appendInteger writes an optional '-' and digits as a JSON number
// (leading zeros dropped, "-0" written as 0).
func appendInteger(dst []byte, t *Type, text []byte) ([]byte, error) {
	s := text
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || skipDigits(s, 0) != len(s) {
		return dst, malformed(t, text, "not an integer")
	}
	i := 0
	for i < len(s)-1 && s[i] == '0' {
		i++
	}
	s = s[i:]
	if neg && s[0] != '0' {
		dst = append(dst, '-')
	}
	return append(dst, s...), nil
}

// isJSONNumber reports whether s is a number in JSON's grammar.
func isJSONNumber(s []byte) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		i = skipDigits(s, i)
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		j := skipDigits(s, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := skipDigits(s, i)
		if j == i {
			return false
		}
		i = j
	}
	return i == len(s)
}

// appendFloat writes a float4/float8 as a JSON number in Python's form (the
// spine's canonical JSON: an integral literal stays as it is, any other is
// written as Python's repr of the float64, "1e+15" as 1000000000000000.0);
// the non-finite values become strings. "-0" is written as -0.0 so that
// readers which keep integers apart from floats (Python) do not turn it
// into the integer 0.
func appendFloat(dst []byte, t *Type, text []byte) ([]byte, error) {
	switch string(text) {
	case "NaN", "Infinity", "-Infinity":
		return AppendString(dst, text), nil
	case "-0":
		return append(dst, "-0.0"...), nil
	}
	if !isJSONNumber(text) {
		return dst, malformed(t, text, "not a float")
	}
	if !bytes.ContainsAny(text, ".eE") {
		return append(dst, text...), nil // a Python int, kept as written
	}
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(text), len(text)), 64)
	if err != nil {
		return dst, malformed(t, text, "not a float")
	}
	return chain.AppendPythonFloat(dst, f), nil
}

// appendNumeric writes a numeric's exact text as a JSON string.
func appendNumeric(dst []byte, t *Type, text []byte) ([]byte, error) {
	switch string(text) {
	case "NaN", "Infinity", "-Infinity":
		return AppendString(dst, text), nil
	}
	s := text
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	i := skipDigits(s, 0)
	n := i
	if i < len(s) && s[i] == '.' {
		j := skipDigits(s, i+1)
		n += j - i - 1
		i = j
	}
	if n == 0 {
		return dst, malformed(t, text, "not a numeric")
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := skipDigits(s, i)
		if j == i {
			return dst, malformed(t, text, "not a numeric")
		}
		i = j
	}
	if i != len(s) {
		return dst, malformed(t, text, "not a numeric")
	}
	dst = append(dst, '"')
	dst = append(dst, text...)
	return append(dst, '"'), nil
}

// appendJSON embeds valid JSON in the spine's canonical form (keys sorted,
// no whitespace, ASCII escapes, Python's numbers) in one pass that also
// checks the grammar (canonicalJSON); anything else, and what the spine
// could not store (see scanJSONNumber, maxJSONDepth), is written as a JSON
// string of the text.
func appendJSON(dst []byte, text []byte) []byte {
	n0 := len(dst)
	if utf8.Valid(text) {
		if out, err := canonicalJSON(dst, text); err == nil {
			return out
		}
	}
	return AppendString(dst[:n0], text)
}

// appendBytea writes the hex form "\x0102ff" as a JSON string.
func appendBytea(dst []byte, t *Type, text []byte) ([]byte, error) {
	if len(text) < 2 || text[0] != '\\' || text[1] != 'x' || len(text)%2 != 0 {
		return dst, malformed(t, text, "not a hex bytea")
	}
	for _, c := range text[2:] {
		if !isDigit(c) && (c|0x20 < 'a' || c|0x20 > 'f') {
			return dst, malformed(t, text, "not a hex bytea")
		}
	}
	dst = append(dst, `"\\`...)
	dst = append(dst, text[1:]...)
	return append(dst, '"'), nil
}

// twoDigits reports whether s[i:i+2] are two digits.
func twoDigits(s []byte, i int) bool {
	return i+2 <= len(s) && isDigit(s[i]) && isDigit(s[i+1])
}

// parseTime checks "HH:MM:SS[.fraction]" at s[i:] and returns its end,
// or -1.
func parseTime(s []byte, i int) int {
	if !twoDigits(s, i) || i+2 >= len(s) || s[i+2] != ':' ||
		!twoDigits(s, i+3) || i+5 >= len(s) || s[i+5] != ':' || !twoDigits(s, i+6) {
		return -1
	}
	i += 8
	if i < len(s) && s[i] == '.' {
		j := skipDigits(s, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	return i
}

// parseOffset checks "+HH[:MM[:SS]]" at s[i:] and returns its end, or -1.
func parseOffset(s []byte, i int) int {
	if i >= len(s) || (s[i] != '+' && s[i] != '-') || !twoDigits(s, i+1) {
		return -1
	}
	i += 3
	for k := 0; k < 2 && i < len(s) && s[i] == ':'; k++ {
		if !twoDigits(s, i+1) {
			return -1
		}
		i += 3
	}
	return i
}

// appendOffset writes an offset checked by parseOffset, adding ":00"
// when it has hours only.
func appendOffset(dst []byte, off []byte) []byte {
	dst = append(dst, off...)
	if len(off) == 3 {
		dst = append(dst, ":00"...)
	}
	return dst
}

// appendDateTime maps the ISO text forms of date, time, timetz,
// timestamp and timestamptz to ISO 8601 strings.
func appendDateTime(dst []byte, t *Type, text []byte) ([]byte, error) {
	kind := t.Kind
	if kind == KindTime || kind == KindTimeTZ {
		return appendTimeOfDay(dst, t, text)
	}
	if s := string(text); s == "infinity" || s == "-infinity" {
		return AppendString(dst, text), nil
	}
	// Date: at least 4 year digits (zero-padded), "-MM-DD".
	yEnd := skipDigits(text, 0)
	if yEnd < 4 || yEnd > 9 || yEnd+6 > len(text) || text[yEnd] != '-' ||
		!twoDigits(text, yEnd+1) || text[yEnd+3] != '-' || !twoDigits(text, yEnd+4) {
		return dst, malformed(t, text, "not a date")
	}
	dEnd := yEnd + 6
	tEnd, oEnd := dEnd, dEnd
	if kind != KindDate {
		if dEnd >= len(text) || text[dEnd] != ' ' {
			return dst, malformed(t, text, "not a timestamp")
		}
		tEnd = parseTime(text, dEnd+1)
		if tEnd < 0 {
			return dst, malformed(t, text, "not a timestamp")
		}
		oEnd = tEnd
		if kind == KindTimestampTZ {
			oEnd = parseOffset(text, tEnd)
			if oEnd < 0 {
				return dst, malformed(t, text, "not a timestamp with time zone")
			}
		}
	}
	bc := false
	switch string(text[oEnd:]) {
	case "":
	case " BC":
		bc = true
	default:
		return dst, malformed(t, text, "unexpected text after the date")
	}
	dst = append(dst, '"')
	if bc {
		var ok bool
		if dst, ok = appendYearBC(dst, text[:yEnd]); !ok {
			return dst, malformed(t, text, "year 0 BC")
		}
	} else {
		dst = append(dst, text[:yEnd]...)
	}
	dst = append(dst, text[yEnd:dEnd]...)
	if kind != KindDate {
		dst = append(dst, 'T')
		dst = append(dst, text[dEnd+1:tEnd]...)
		dst = appendOffset(dst, text[tEnd:oEnd])
	}
	return append(dst, '"'), nil
}

// appendTimeOfDay writes a time or timetz value (text is PostgreSQL's
// output) as a JSON string.
func appendTimeOfDay(dst []byte, t *Type, text []byte) ([]byte, error) {
	end := parseTime(text, 0)
	if end < 0 {
		return dst, malformed(t, text, "not a time")
	}
	off := end
	if t.Kind == KindTimeTZ {
		off = parseOffset(text, end)
		if off < 0 {
			return dst, malformed(t, text, "not a time with time zone")
		}
	}
	if off != len(text) {
		return dst, malformed(t, text, "not a time")
	}
	dst = append(dst, '"')
	dst = append(dst, text[:end]...)
	dst = appendOffset(dst, text[end:off])
	return append(dst, '"'), nil
}

// appendYearBC writes the year digits of a BC date as an ISO 8601
// astronomical year: 1 BC is year 0, 2 BC is year -1. There is no year 0
// BC (ok false).
func appendYearBC(dst, digits []byte) (_ []byte, ok bool) {
	year := 0
	for _, c := range digits {
		year = year*10 + int(c-'0')
	}
	if year == 0 {
		return dst, false
	}
	year--
	if year > 0 {
		dst = append(dst, '-')
	}
	var buf [10]byte
	n := len(buf)
	for k := 0; k < 4 || year > 0; k++ {
		n--
		buf[n] = byte('0' + year%10)
		year /= 10
	}
	return append(dst, buf[n:]...), true
}

// arraySpace reports whether PostgreSQL's array parser skips c as
// whitespace.
func arraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// isNull reports whether s is "NULL", ignoring case.
func isNull(s []byte) bool {
	return len(s) == 4 && s[0]|0x20 == 'n' && s[1]|0x20 == 'u' && s[2]|0x20 == 'l' && s[3]|0x20 == 'l'
}

// arrayParser holds the state of parsing one array literal.
type arrayParser struct {
	t     *Type
	text  []byte
	pos   int
	delim byte
	// dims[l] is 1 + the element count of the sub-arrays at level l (0: none
	// seen yet), so that ragged literals are rejected as PostgreSQL does.
	dims [maxDepth + 1]int
	// subs[l] is 1 if level l holds sub-arrays, 2 if it holds elements.
	subs [maxDepth + 1]uint8
}

func (p *arrayParser) skipSpace() {
	for p.pos < len(p.text) && arraySpace(p.text[p.pos]) {
		p.pos++
	}
}

// appendArray converts an array literal ("{1,2}", "{{1},{2}}",
// "[0:1]={1,2}") to a JSON array.
func appendArray(dst []byte, t *Type, text []byte, depth int) ([]byte, error) {
	p := arrayParser{t: t, text: text, delim: t.Delim}
	if p.delim == 0 {
		p.delim = ','
	}
	p.skipSpace()
	if p.pos < len(text) && text[p.pos] == '[' {
		// Explicit bounds: "[lb:ub][lb:ub]=" (or "[ub]"), dropped.
		for p.pos < len(text) && text[p.pos] == '[' {
			p.pos++
			for k := 0; k < 2; k++ {
				if p.pos < len(text) && (text[p.pos] == '-' || text[p.pos] == '+') {
					p.pos++
				}
				end := skipDigits(text, p.pos)
				if end == p.pos {
					return dst, malformed(t, text, "bad array bounds")
				}
				p.pos = end
				if k == 0 && p.pos < len(text) && text[p.pos] == ':' {
					p.pos++
					continue
				}
				break
			}
			if p.pos >= len(text) || text[p.pos] != ']' {
				return dst, malformed(t, text, "bad array bounds")
			}
			p.pos++
			p.skipSpace()
		}
		if p.pos >= len(text) || text[p.pos] != '=' {
			return dst, malformed(t, text, "missing '=' after array bounds")
		}
		p.pos++
		p.skipSpace()
	}
	out, err := p.level(dst, depth, 0)
	if err != nil {
		return dst, err
	}
	p.skipSpace()
	if p.pos != len(text) {
		return dst, malformed(t, text, "junk after the array")
	}
	return out, nil
}

// level parses one "{...}" at p.pos; depth is the nesting of the enclosing
// value, lvl the dimension (0 for the outermost braces).
func (p *arrayParser) level(dst []byte, depth, lvl int) ([]byte, error) {
	text := p.text
	depth++
	if depth > maxDepth || lvl >= len(p.dims) {
		return dst, malformed(p.t, text, "nested too deeply")
	}
	if p.pos >= len(text) || text[p.pos] != '{' {
		return dst, malformed(p.t, text, "missing '{'")
	}
	p.pos++
	dst = append(dst, '[')
	p.skipSpace()
	count := 0
	if p.pos < len(text) && text[p.pos] == '}' {
		p.pos++
	} else {
		for {
			p.skipSpace()
			if p.pos >= len(text) {
				return dst, malformed(p.t, text, "unterminated array")
			}
			if count > 0 {
				dst = append(dst, ',')
			}
			var err error
			if text[p.pos] == '{' {
				if p.subs[lvl] == 2 {
					return dst, malformed(p.t, text, "sub-array mixed with elements")
				}
				p.subs[lvl] = 1
				dst, err = p.level(dst, depth, lvl+1)
			} else {
				if p.subs[lvl] == 1 {
					return dst, malformed(p.t, text, "element mixed with sub-arrays")
				}
				p.subs[lvl] = 2
				dst, err = p.element(dst, depth)
			}
			if err != nil {
				return dst, err
			}
			count++
			p.skipSpace()
			if p.pos >= len(text) {
				return dst, malformed(p.t, text, "unterminated array")
			}
			if c := text[p.pos]; c == p.delim {
				p.pos++
				continue
			} else if c == '}' {
				p.pos++
				break
			}
			return dst, malformed(p.t, text, "unexpected character in array")
		}
	}
	if p.dims[lvl] == 0 {
		p.dims[lvl] = count + 1
	} else if p.dims[lvl] != count+1 {
		return dst, malformed(p.t, text, "sub-arrays of different sizes")
	}
	return append(dst, ']'), nil
}

// element parses one element at p.pos (not '{', whitespace skipped) and
// appends its conversion by the element type.
func (p *arrayParser) element(dst []byte, depth int) ([]byte, error) {
	if out, done, err := p.plainElement(dst, depth); done {
		return out, err
	}
	return p.escapedElement(dst, depth)
}

// plainElement converts an element without escapes, quoted or not, straight
// from the text; done is false for any other.
func (p *arrayParser) plainElement(dst []byte, depth int) (_ []byte, done bool, err error) {
	text := p.text
	start := p.pos
	// Fast path: an unquoted element without escapes.
	i := start
	for i < len(text) {
		c := text[i]
		if c == p.delim || c == '}' || c == '\\' || c == '"' || c == '{' {
			break
		}
		i++
	}
	if i < len(text) && (text[i] == p.delim || text[i] == '}') {
		e := i
		for e > start && arraySpace(text[e-1]) {
			e--
		}
		raw := text[start:e]
		if len(raw) == 0 {
			return dst, true, malformed(p.t, text, "empty array element")
		}
		p.pos = i
		if isNull(raw) {
			return append(dst, "null"...), true, nil
		}
		dst, err = p.convert(dst, raw, depth)
		return dst, true, err
	}
	// Fast path: a quoted element without escapes.
	if i == start && i < len(text) && text[i] == '"' {
		j := i + 1
		for j < len(text) && text[j] != '"' && text[j] != '\\' {
			j++
		}
		if j < len(text) && text[j] == '"' {
			k := j + 1
			for k < len(text) && arraySpace(text[k]) {
				k++
			}
			if k < len(text) && (text[k] == p.delim || text[k] == '}') {
				p.pos = k
				dst, err = p.convert(dst, text[i+1:j], depth)
				return dst, true, err
			}
		}
	}
	return dst, false, nil
}

// escapedElement is the general case: it de-quotes and de-escapes the
// element into dst's tail, converts from there, then moves the conversion
// down over it.
func (p *arrayParser) escapedElement(dst []byte, depth int) ([]byte, error) {
	text, start := p.text, p.pos
	s0 := len(dst)
	sig := s0 // end of the last character that trailing-space trimming keeps
	quoted, inQuotes := false, false
	i := start
	for {
		if i >= len(text) {
			return dst[:s0], malformed(p.t, text, "unterminated array element")
		}
		c := text[i]
		if c == '\\' {
			if i+1 >= len(text) {
				return dst[:s0], malformed(p.t, text, "unterminated array element")
			}
			dst = append(dst, text[i+1])
			i += 2
			quoted = true
			sig = len(dst)
			continue
		}
		if c == '"' {
			inQuotes = !inQuotes
			quoted = true
			i++
			sig = len(dst)
			continue
		}
		if !inQuotes {
			if c == p.delim || c == '}' {
				break
			}
			if c == '{' {
				return dst[:s0], malformed(p.t, text, "unexpected '{' in array element")
			}
		}
		dst = append(dst, c)
		i++
		if inQuotes || !arraySpace(c) {
			sig = len(dst)
		}
	}
	p.pos = i
	dst = dst[:sig]
	raw := dst[s0:]
	if !quoted {
		if len(raw) == 0 {
			return dst[:s0], malformed(p.t, text, "empty array element")
		}
		if isNull(raw) {
			return append(dst[:s0], "null"...), nil
		}
	}
	out, err := p.convert(dst, raw, depth)
	if err != nil {
		return dst[:s0], err
	}
	return dropScratch(out, s0, len(raw)), nil
}

// convert appends the element's JSON form.
func (p *arrayParser) convert(dst, raw []byte, depth int) ([]byte, error) {
	out, err := appendValue(dst, p.t.Elem, raw, depth)
	if err != nil {
		return dst, fmt.Errorf("array %s: %w", p.t.Name, err)
	}
	return out, nil
}

// dropScratch removes n scratch bytes at buf[at:] by moving what follows
// them down.
func dropScratch(buf []byte, at, n int) []byte {
	copy(buf[at:], buf[at+n:])
	return buf[:len(buf)-n]
}

// appendComposite converts a record literal ("(1,\"a b\",)") to a JSON
// object keyed by field name.
func appendComposite(dst []byte, t *Type, text []byte, depth int) ([]byte, error) {
	depth++
	if depth > maxDepth {
		return dst, malformed(t, text, "nested too deeply")
	}
	n0 := len(dst)
	pos := 0
	for pos < len(text) && arraySpace(text[pos]) {
		pos++
	}
	if pos >= len(text) || text[pos] != '(' {
		return dst, malformed(t, text, "missing '('")
	}
	pos++
	dst = append(dst, '{')
	if len(t.Fields) == 0 {
		if pos >= len(text) || text[pos] != ')' {
			return dst[:n0], malformed(t, text, "too many fields")
		}
		pos++
	}
	segs := make([][2]int, len(t.Fields)) // each field's "name":value in dst
	for fi := range t.Fields {
		f := &t.Fields[fi]
		if fi > 0 {
			dst = append(dst, ',')
		}
		segs[fi][0] = len(dst)
		dst = AppendText(dst, f.Name)
		dst = append(dst, ':')
		if pos >= len(text) {
			return dst[:n0], malformed(t, text, "unterminated record")
		}
		var err error
		if c := text[pos]; c == ',' || c == ')' {
			dst = append(dst, "null"...)
		} else if dst, pos, err = compositeField(dst, t, f, text, pos, depth); err != nil {
			return dst[:n0], err
		}
		if pos >= len(text) {
			return dst[:n0], malformed(t, text, "unterminated record")
		}
		want := byte(',')
		if fi == len(t.Fields)-1 {
			want = ')'
		}
		if text[pos] != want {
			if want == ')' {
				return dst[:n0], malformed(t, text, "too many fields")
			}
			return dst[:n0], malformed(t, text, "too few fields")
		}
		segs[fi][1] = len(dst)
		pos++
	}
	for pos < len(text) && arraySpace(text[pos]) {
		pos++
	}
	if pos != len(text) {
		return dst[:n0], malformed(t, text, "junk after the record")
	}
	return append(sortMembers(dst, n0+1, t.Fields, segs), '}'), nil
}

// sortMembers puts the object members at dst[from:], one per field at
// segs, in the order of their names, as canonical JSON wants them.
func sortMembers(dst []byte, from int, fields []Field, segs [][2]int) []byte {
	if slices.IsSortedFunc(fields, func(a, b Field) int { return strings.Compare(a.Name, b.Name) }) {
		return dst
	}
	order := make([]int, len(fields))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return strings.Compare(fields[a].Name, fields[b].Name) })
	sorted := make([]byte, 0, len(dst)-from)
	for i, fi := range order {
		if i > 0 {
			sorted = append(sorted, ',')
		}
		sorted = append(sorted, dst[segs[fi][0]:segs[fi][1]]...)
	}
	return append(dst[:from], sorted...)
}

// compositeField parses the non-empty field at text[pos:] and appends
// its conversion; it returns the position of the ',' or ')' after it.
func compositeField(dst []byte, t *Type, f *Field, text []byte, pos, depth int) ([]byte, int, error) {
	convert := func(dst, raw []byte) ([]byte, error) {
		out, err := appendValue(dst, f.Type, raw, depth)
		if err != nil {
			return dst, fmt.Errorf("field %s.%s: %w", t.Name, f.Name, err)
		}
		return out, nil
	}
	// Fast path: an unquoted field without escapes.
	i := pos
	for i < len(text) {
		c := text[i]
		if c == ',' || c == ')' || c == '"' || c == '\\' {
			break
		}
		i++
	}
	if i < len(text) && (text[i] == ',' || text[i] == ')') {
		out, err := convert(dst, text[pos:i])
		return out, i, err
	}
	// Fast path: a quoted field without escapes or doubled quotes.
	if i == pos && text[i] == '"' {
		j := i + 1
		for j < len(text) && text[j] != '"' && text[j] != '\\' {
			j++
		}
		if j+1 < len(text) && text[j] == '"' && (text[j+1] == ',' || text[j+1] == ')') {
			out, err := convert(dst, text[i+1:j])
			return out, j + 1, err
		}
	}
	// General case, as PostgreSQL's record_in: quotes toggle quoting, ""
	// inside quotes is a quote, a backslash takes the next byte literally.
	s0 := len(dst)
	inQuotes := false
	i = pos
	for {
		if i >= len(text) {
			return dst[:s0], i, malformed(t, text, "unterminated record field")
		}
		c := text[i]
		if !inQuotes && (c == ',' || c == ')') {
			break
		}
		switch {
		case c == '\\':
			if i+1 >= len(text) {
				return dst[:s0], i, malformed(t, text, "unterminated record field")
			}
			dst = append(dst, text[i+1])
			i += 2
		case c == '"' && !inQuotes:
			inQuotes = true
			i++
		case c == '"' && i+1 < len(text) && text[i+1] == '"':
			dst = append(dst, '"')
			i += 2
		case c == '"':
			inQuotes = false
			i++
		default:
			dst = append(dst, c)
			i++
		}
	}
	raw := dst[s0:]
	out, err := convert(dst, raw)
	if err != nil {
		return dst[:s0], i, err
	}
	return dropScratch(out, s0, len(raw)), i, nil
}

// noEscape marks the ASCII bytes AppendString copies as they are: the
// printable ones but '"' and '\\'.
var noEscape = func() (tab [utf8.RuneSelf]bool) {
	for c := 0x20; c < 0x7f; c++ {
		tab[c] = c != '"' && c != '\\'
	}
	return
}()

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// wordSafe reports whether all 8 bytes of w are ASCII that AppendString
// copies unchanged (no control character, DEL, '"' or '\\').
func wordSafe(w uint64) bool {
	ctl := (w - ones*0x20) & ^w
	q := w ^ (ones * '"')
	q = (q - ones) & ^q
	b := w ^ (ones * '\\')
	b = (b - ones) & ^b
	d := w ^ (ones * 0x7f)
	d = (d - ones) & ^d
	return (w|ctl|q|b|d)&highs == 0
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string in the spine's canonical form
// (Python's json.dumps with ensure_ascii): '"', '\\' and \n \r \t \b \f
// as two-character escapes, every other character outside printable ASCII
// as \uXXXX with lower-case hex (DEL included), characters above U+FFFF as
// a surrogate pair. Invalid UTF-8 bytes become U+FFFD, so the result is
// always valid JSON. Runs of bytes that need no escaping are copied in one
// go.
func AppendString(dst []byte, s []byte) []byte {
	dst = slices.Grow(dst, len(s)+2)
	dst = append(dst, '"')
	return append(appendStringBody(dst, s), '"')
}

// appendStringBody is AppendString without the quotes.
func appendStringBody(dst []byte, s []byte) []byte {
	start := 0
	i := 0
	for i < len(s) {
		for i+8 <= len(s) && wordSafe(binary.LittleEndian.Uint64(s[i:])) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf && noEscape[c] {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		if c < utf8.RuneSelf {
			dst = appendEscapedASCII(dst, c)
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			r = utf8.RuneError
		}
		dst = appendEscapedRune(dst, r)
		i += size
		start = i
	}
	return append(dst, s[start:]...)
}

// AppendText is AppendString of a string, without copying it.
func AppendText(dst []byte, s string) []byte {
	return AppendString(dst, unsafe.Slice(unsafe.StringData(s), len(s)))
}

// appendEscapedASCII writes the escape of an ASCII byte that needs one.
func appendEscapedASCII(dst []byte, c byte) []byte {
	switch c {
	case '"':
		return append(dst, '\\', '"')
	case '\\':
		return append(dst, '\\', '\\')
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	case '\b':
		return append(dst, '\\', 'b')
	case '\f':
		return append(dst, '\\', 'f')
	}
	return appendU16(dst, uint16(c))
}

// appendEscapedRune writes r (not ASCII) as \uXXXX, or as a surrogate pair
// above U+FFFF.
func appendEscapedRune(dst []byte, r rune) []byte {
	if r > 0xFFFF {
		r -= 0x10000
		dst = appendU16(dst, uint16(0xD800+(r>>10)))
		return appendU16(dst, uint16(0xDC00+(r&0x3FF)))
	}
	return appendU16(dst, uint16(r))
}

func appendU16(dst []byte, v uint16) []byte {
	return append(dst, '\\', 'u', hexDigits[v>>12], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
}
