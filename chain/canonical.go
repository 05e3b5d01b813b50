// Package chain recomputes the audit-stream spine's hash chain: the
// canonical JSON the spine hashes (Python's json.dumps with sorted keys),
// each event's SHA-256, and the links between them. The spine's own /verify
// runs on the host an auditor may not trust; this is the same computation,
// independently, in Go (pgaudit-cdc verify).
package chain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Canonical returns the canonical JSON of v exactly as the audit-stream spine
// computes it: Python's
//
//	json.dumps(obj, sort_keys=True, separators=(",", ":"))   # ensure_ascii=True
//
// v is expected to be a value produced by encoding/json with
// Decoder.UseNumber: map[string]any, []any, string, json.Number, bool or nil.
// For convenience float64, float32 and the Go integer types are accepted as
// well (floats are written as Python floats, integers as Python ints).
//
// The rules reproduced are:
//   - object keys sorted at every depth (code point order), no whitespace;
//   - strings: `"` and `\` and \n \r \t \b \f as two-character escapes, other
//     characters below U+0020 and everything from U+007F upwards as \uXXXX
//     with lower-case hex (DEL included, as CPython's encoder does), characters
//     above U+FFFF as a surrogate pair; `/` is not escaped;
//   - a number literal without '.', 'e' or 'E' is a Python int, written in
//     full whatever its size ("-0" becomes "0");
//   - any other number literal is a Python float (float64), written in
//     Python's repr: shortest round-trip digits, positional with at least one
//     fractional digit ("1.0", "0.0001", "-0.0") when the decimal exponent is
//     in [-4, 16), scientific otherwise ("1e+16", "1.5e-07"); a literal that
//     overflows float64 becomes Infinity or -Infinity, as Python's json module
//     does by default (that output is not strict JSON).
//
// Canonical returns an error for any other Go type and for a json.Number that
// is not a valid JSON number literal.
func Canonical(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := writeValue(&buf, v, true); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Event is one stored event as the spine returns it. Payload must be
// decoded with json.Decoder.UseNumber, so that numbers keep their literal.
type Event struct {
	EventID   int64          `json:"event_id"`
	Timestamp string         `json:"timestamp"`
	Kind      string         `json:"kind"`
	Source    string         `json:"source"`
	Payload   map[string]any `json:"payload"`
	PrevHash  string         `json:"prev_hash"`
	Hash      string         `json:"hash"`
}

// Genesis is the prev_hash of the first event of a chain.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Hash returns the chain hash of e as the spine computes it: the lower-case
// hex SHA-256 of Canonical of the object {event_id, timestamp, kind, source,
// payload, prev_hash}. e.Hash is ignored. A nil payload counts as {}. It
// fails only if e.Payload holds a value Canonical rejects, which cannot
// happen for a payload decoded from JSON.
func Hash(e Event) (string, error) {
	b, err := CanonicalEvent(e)
	if err != nil {
		return "", fmt.Errorf("hash of event %d: %w", e.EventID, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// HashWithPayload is Hash for a caller that has the canonical JSON of
// e.Payload already (Canonical of it): the payload is not encoded twice.
func HashWithPayload(e Event, payload []byte) string {
	// The payload, which can be large, is hashed where it is, not copied:
	// only the members around it are written into a buffer.
	var buf bytes.Buffer
	buf.Grow(len(e.Kind) + len(e.Source) + len(e.Timestamp) + 160)
	h := sha256.New()
	buf.WriteString(`{"event_id":`)
	buf.WriteString(strconv.FormatInt(e.EventID, 10))
	buf.WriteString(`,"kind":`)
	writeString(&buf, e.Kind, true)
	buf.WriteString(`,"payload":`)
	h.Write(buf.Bytes())
	h.Write(payload)
	buf.Reset()
	buf.WriteString(`,"prev_hash":`)
	writeString(&buf, e.PrevHash, true)
	buf.WriteString(`,"source":`)
	writeString(&buf, e.Source, true)
	buf.WriteString(`,"timestamp":`)
	writeString(&buf, e.Timestamp, true)
	buf.WriteByte('}')
	h.Write(buf.Bytes())
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

// CanonicalEvent is the canonical JSON that Hash digests.
func CanonicalEvent(e Event) ([]byte, error) {
	payload := e.Payload
	if payload == nil {
		payload = map[string]any{}
	}
	return Canonical(map[string]any{
		"event_id":  json.Number(strconv.FormatInt(e.EventID, 10)),
		"timestamp": e.Timestamp,
		"kind":      e.Kind,
		"source":    e.Source,
		"payload":   payload,
		"prev_hash": e.PrevHash,
	})
}

// WriteValue writes v in Python's json.dumps form. With ascii set (hash
// mode) every character from U+007F upwards is escaped (ensure_ascii=True).
// Without it (response mode) such characters are written as UTF-8, as
// FastAPI's responses (ensure_ascii=False) do, and non-finite floats as null.
// Keys are always sorted.
func WriteValue(buf *bytes.Buffer, v any, ascii bool) error {
	return writeValue(buf, v, ascii)
}

func writeValue(buf *bytes.Buffer, v any, ascii bool) error {
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		if x {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case string:
		writeString(buf, x, ascii)
	case json.Number:
		s, err := pythonNumber(string(x))
		if err != nil {
			return err
		}
		buf.WriteString(responseFloat(s, ascii))
	case float64:
		buf.WriteString(responseFloat(pythonFloat(x), ascii))
	case float32:
		buf.WriteString(responseFloat(pythonFloat(float64(x)), ascii))
	case int:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int8:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int16:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int32:
		buf.WriteString(strconv.FormatInt(int64(x), 10))
	case int64:
		buf.WriteString(strconv.FormatInt(x, 10))
	case uint:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint8:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint16:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint32:
		buf.WriteString(strconv.FormatUint(uint64(x), 10))
	case uint64:
		buf.WriteString(strconv.FormatUint(x, 10))
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k, ascii)
			buf.WriteByte(':')
			if err := writeValue(buf, x[k], ascii); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeValue(buf, e, ascii); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	default:
		return fmt.Errorf("spinetest: canonical JSON: unsupported type %T", v)
	}
	return nil
}

// responseFloat maps the non-finite floats to null in response mode (not
// ascii): the spine serialises its responses through pydantic in JSON mode,
// whose default for inf and nan is null. In hash mode they stay
// Infinity/-Infinity/NaN, as json.dumps writes them.
func responseFloat(s string, ascii bool) string {
	if !ascii && (s == "Infinity" || s == "-Infinity" || s == "NaN") {
		return "null"
	}
	return s
}

const hexDigits = "0123456789abcdef"

// writeString writes s as a JSON string the way CPython's json encoder does.
// Invalid UTF-8 bytes (which a decoded JSON string never holds) are written
// as U+FFFD. Runs that need no escape are copied whole: a value of hundreds
// of MB is mostly such a run.
func writeString(buf *bytes.Buffer, s string, ascii bool) {
	buf.WriteByte('"')
	done := 0 // s[:done] is written
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!ascii || c != 0x7f) {
				i++
				continue
			}
			buf.WriteString(s[done:i])
			i++
			done = i
			switch c {
			case '"':
				buf.WriteString(`\"`)
			case '\\':
				buf.WriteString(`\\`)
			case '\n':
				buf.WriteString(`\n`)
			case '\r':
				buf.WriteString(`\r`)
			case '\t':
				buf.WriteString(`\t`)
			case '\b':
				buf.WriteString(`\b`)
			case '\f':
				buf.WriteString(`\f`)
			default: // the other control characters, and DEL when ascii
				writeU16(buf, rune(c))
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if !ascii && (r != utf8.RuneError || size > 1) {
			i += size // valid UTF-8 is written as it is
			continue
		}
		buf.WriteString(s[done:i])
		i += size
		done = i
		switch {
		case !ascii:
			buf.WriteRune(utf8.RuneError)
		case r > 0xFFFF:
			r -= 0x10000
			writeU16(buf, 0xD800+(r>>10))
			writeU16(buf, 0xDC00+(r&0x3FF))
		default:
			writeU16(buf, r)
		}
	}
	buf.WriteString(s[done:])
	buf.WriteByte('"')
}

func writeU16(buf *bytes.Buffer, r rune) {
	buf.WriteString(`\u`)
	buf.WriteByte(hexDigits[(r>>12)&0xF])
	buf.WriteByte(hexDigits[(r>>8)&0xF])
	buf.WriteByte(hexDigits[(r>>4)&0xF])
	buf.WriteByte(hexDigits[r&0xF])
}

// pythonNumber converts a JSON number literal to the text Python's json
// module writes after json.loads: an int literal stays as written (minus the
// sign of "-0"), a float literal goes through float64 and repr.
// PythonNumber returns the JSON number literal lit as the spine's canonical
// JSON writes it: an integer literal as a Python int, any other as the
// repr of a Python float.
func PythonNumber(lit string) (string, error) { return pythonNumber(lit) }

func pythonNumber(lit string) (string, error) {
	if !validNumber(lit) {
		return "", fmt.Errorf("canonical JSON: invalid number literal %q", lit)
	}
	if isIntLiteral(lit) {
		if lit == "-0" {
			return "0", nil
		}
		return lit, nil
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil && !isRangeErr(err) {
		return "", fmt.Errorf("canonical JSON: %w", err)
	}
	// On overflow ParseFloat returns ±Inf, on underflow ±0 (as Python does).
	return pythonFloat(f), nil
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

// isIntLiteral reports whether a (valid) JSON number literal is a Python int.
func isIntLiteral(lit string) bool {
	return !strings.ContainsAny(lit, ".eE")
}

// validNumber reports whether s is a JSON number literal (RFC 8259).
func validNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	if i >= len(s) {
		return false
	}
	switch {
	case s[i] == '0':
		i++
	case s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(s)
}

// pythonFloat is Python's float.__repr__ as json.dumps uses it (with
// Infinity/-Infinity/NaN for the non-finite values).
func pythonFloat(f float64) string { return string(AppendPythonFloat(nil, f)) }

// AppendPythonFloat appends f as Python's repr writes it (Infinity,
// -Infinity and NaN for the non-finite values), without allocating when dst
// has room.
func AppendPythonFloat(dst []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	}
	// Shortest round-trip digits in the form [-]d[.ddd]e±XX; Go writes at
	// least two exponent digits, exactly as Python does.
	var scratch [32]byte
	sci := strconv.AppendFloat(scratch[:0], f, 'e', -1, 64)
	ePos := bytes.IndexByte(sci, 'e')
	exp := 0
	for _, c := range sci[ePos+2:] {
		exp = exp*10 + int(c-'0')
	}
	if sci[ePos+1] == '-' {
		exp = -exp
	}
	if exp < -4 || exp >= 16 {
		return append(dst, sci...)
	}
	mant := sci[:ePos]
	if mant[0] == '-' {
		dst = append(dst, '-')
		mant = mant[1:]
	}
	// The digits without the point: mant is d or d.ddd.
	var dbuf [24]byte
	digits := append(append(dbuf[:0], mant[0]), mant[min(2, len(mant)):]...)
	if exp >= 0 {
		intLen := exp + 1
		if len(digits) <= intLen {
			dst = append(dst, digits...)
			for range intLen - len(digits) {
				dst = append(dst, '0')
			}
			return append(dst, ".0"...)
		}
		dst = append(dst, digits[:intLen]...)
		dst = append(dst, '.')
		return append(dst, digits[intLen:]...)
	}
	dst = append(dst, "0."...)
	for range -exp - 1 {
		dst = append(dst, '0')
	}
	return append(dst, digits...)
}
