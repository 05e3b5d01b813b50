package pgjson

import (
	"bytes"
	"math"
	"strconv"
)

// States of compactJSON.
const (
	jsValue = iota // a value must come
	jsKey          // an object key must come
	jsColon        // the ':' after a key must come
	jsAfter        // a value ended: ',', a closing bracket or the end
)

// compactJSON appends text to dst without insignificant whitespace and with
// U+2028/U+2029 escaped, checking JSON's grammar (RFC 8259) in the same
// pass. ok is false when text is not exactly one JSON value, nests deeper
// than maxJSONDepth, has an integer of more than maxJSONIntDigits digits or
// a number beyond the float64 range (the spine, in Python, would store it
// as Infinity, which is not JSON); dst is then garbage beyond its original
// length. text must be valid UTF-8.
//
// It replaces encoding/json.Valid followed by a second walk: jsonb values
// were checked twice, about a sixth of the agent's decoding time on a table
// with one jsonb column. FuzzAppendJSON holds it to the old behaviour.
func compactJSON(dst, text []byte) (_ []byte, ok bool) {
	s := jsonScanner{state: jsValue}
	start, i := 0, 0
	for i < len(text) {
		c := text[i]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			dst = append(dst, text[start:i]...)
			i++
			start = i
			continue
		}
		switch {
		case c == '"' && (s.state == jsValue || s.state == jsKey):
			if dst, i, start, ok = compactString(dst, text, i, start); ok {
				s.endString()
			}
		case s.state == jsValue:
			i, ok = s.value(text, i)
		case s.state == jsKey:
			ok = s.closeEmptyObject(c)
			i++
		case s.state == jsColon:
			ok = c == ':'
			s.state = jsValue
			i++
		default:
			ok = s.after(c)
			i++
		}
		if !ok {
			return dst, false
		}
	}
	if s.state != jsAfter || s.depth != 0 {
		return dst, false
	}
	return append(dst, text[start:]...), true
}

// jsonScanner is compactJSON's grammar: the open brackets and what must
// come next.
type jsonScanner struct {
	stack    [maxJSONDepth]byte
	depth    int
	state    int
	canClose bool // just after '[' or '{': the closing bracket may follow
}

// endString moves past a string: a value is followed by what comes after
// values, a key by its colon.
func (s *jsonScanner) endString() {
	if s.state == jsKey {
		s.state = jsColon
	} else {
		s.state = jsAfter
	}
	s.canClose = false
}

// value scans the value (other than a string) starting at text[i], or the
// opening bracket of one, or the ']' of an empty array, and returns the
// index after it.
func (s *jsonScanner) value(text []byte, i int) (next int, ok bool) {
	switch c := text[i]; {
	case c == '{' || c == '[':
		if s.depth == maxJSONDepth {
			return i, false
		}
		s.stack[s.depth] = c
		s.depth++
		s.state, s.canClose = jsValue, true
		if c == '{' {
			s.state = jsKey
		}
		return i + 1, true
	case c == ']' && s.canClose:
		s.depth--
		i++
	case c == '-' || isDigit(c):
		if i, ok = scanJSONNumber(text, i); !ok {
			return i, false
		}
	case c == 't' && bytes.HasPrefix(text[i:], []byte("true")):
		i += 4
	case c == 'f' && bytes.HasPrefix(text[i:], []byte("false")):
		i += 5
	case c == 'n' && bytes.HasPrefix(text[i:], []byte("null")):
		i += 4
	default:
		return i, false
	}
	s.state, s.canClose = jsAfter, false
	return i, true
}

// closeEmptyObject takes c where a key must come: only the '}' of an
// empty object may come instead.
func (s *jsonScanner) closeEmptyObject(c byte) bool {
	if c != '}' || !s.canClose {
		return false
	}
	s.depth--
	s.state, s.canClose = jsAfter, false
	return true
}

// after takes c after a value: a ',' before the next member or element,
// or the bracket closing the innermost open one. Nothing may follow the
// outermost value.
func (s *jsonScanner) after(c byte) bool {
	if s.depth == 0 {
		return false
	}
	open := s.stack[s.depth-1]
	switch {
	case c == ',':
		s.state = jsValue
		if open == '{' {
			s.state = jsKey
		}
	case c == '}' && open == '{', c == ']' && open == '[':
		s.depth--
	default:
		return false
	}
	return true
}

// compactString checks the JSON string starting at text[i] (a '"') and
// returns the index after it. U+2028 and U+2029 are escaped on the way:
// the run before them is appended to dst and the next run starts after
// them.
func compactString(dst, text []byte, i, start int) (_ []byte, next, runStart int, ok bool) {
	i++
	for i < len(text) {
		switch b := text[i]; {
		case b == '"':
			return dst, i + 1, start, true
		case b == '\\':
			if i+1 >= len(text) {
				return dst, i, start, false
			}
			switch text[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(text) || !isHex4(text[i+2:i+6]) {
					return dst, i, start, false
				}
				i += 6
			default:
				return dst, i, start, false
			}
		case b < 0x20:
			return dst, i, start, false
		case b == 0xE2 && i+2 < len(text) && text[i+1] == 0x80 && (text[i+2] == 0xA8 || text[i+2] == 0xA9):
			dst = append(dst, text[start:i]...)
			dst = append(dst, `\u202`...)
			dst = append(dst, '8'+text[i+2]-0xA8)
			i += 3
			start = i
		default:
			i++
		}
	}
	return dst, i, start, false
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) && (c|0x20 < 'a' || c|0x20 > 'f') {
			return false
		}
	}
	return true
}

// scanJSONNumber checks the JSON number starting at text[i] and returns the
// index after it. Integers of more than maxJSONIntDigits digits, and numbers
// with a fraction or an exponent beyond the float64 range, are refused.
func scanJSONNumber(text []byte, i int) (int, bool) {
	j := i
	if text[j] == '-' {
		j++
	}
	if j >= len(text) || !isDigit(text[j]) {
		return j, false
	}
	intStart := j
	if text[j] == '0' {
		j++
	} else {
		j = skipDigits(text, j)
	}
	intDigits := j - intStart
	if intDigits > maxJSONIntDigits {
		return j, false
	}
	intEnd := j
	big := false
	if j < len(text) && text[j] == '.' {
		k := skipDigits(text, j+1)
		if k == j+1 {
			return j, false
		}
		j = k
	}
	if j < len(text) && (text[j] == 'e' || text[j] == 'E') {
		j++
		if j < len(text) && (text[j] == '+' || text[j] == '-') {
			j++
		}
		zeros := j
		for zeros < len(text) && text[zeros] == '0' {
			zeros++
		}
		k := skipDigits(text, j)
		if k == j {
			return j, false
		}
		big = k-zeros >= 3
		j = k
	}
	if j > intEnd && (big || intDigits > 300) {
		if f, err := strconv.ParseFloat(string(text[i:j]), 64); err != nil || math.IsInf(f, 0) {
			return j, false
		}
	}
	return j, true
}
