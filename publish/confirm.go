package publish

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"unicode/utf8"
)

// confirm reads a 201's body and checks that it is what the contract
// promises: one complete GovernanceEvent (event_id an integer >= 1, hash and
// prev_hash 64 lower-case hex digits, non-empty kind, source and timestamp
// strings, a payload object) whose payload.metadata.idempotency_key is key,
// and nothing after it. Anything else — an HTML page from a proxy, a body
// cut short (io.ErrUnexpectedEOF) or stalled until the timeout, another
// event — leaves the event's fate unknown.
//
// The echo is as large as the event (hundreds of MB for a large row) and the
// event is still in memory, so the echo is never held: it is read once,
// validated as JSON on the fly (encoding/json's Decoder would buffer each
// top-level value whole, and its Token method is several times slower), and
// only the few fields checked are kept. As in encoding/json, a member given
// twice counts with its last value.
func confirm(r io.Reader, key string) (stored, error) {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil) // drop r
		readers.Put(br)
	}()
	s := &echoScanner{r: br}
	var e echo
	if err := s.expect('{'); err != nil {
		return stored{}, err
	}
	if err := s.object(func(name []byte) error { return e.member(s, name) }); err != nil {
		return stored{}, err
	}
	if err := s.end(); err != nil {
		return stored{}, err
	}
	id, err := e.check(key)
	if err != nil {
		return stored{}, err
	}
	return stored{id: id, hash: e.hash.text, key: key}, nil
}

// stored is where the spine says it stored an event: its event_id and hash.
type stored struct {
	id   int64
	hash string
	key  string
}

// errOtherEvent says an answer is a whole event, but not the one asked
// about.
var errOtherEvent = errors.New("another event")

// echo is what confirm keeps of a 201's body.
type echo struct {
	id                                    kept
	hash, prev, kind, source, ts, gotKey  kept
	payloadSet, payloadObj, metadataIsObj bool
}

// member reads the event's member name: the fields checked are kept, the
// rest validated and dropped.
func (e *echo) member(s *echoScanner, name []byte) error {
	switch string(name) {
	case "event_id":
		return s.keep(&e.id, true)
	case "hash":
		return s.keep(&e.hash, false)
	case "prev_hash":
		return s.keep(&e.prev, false)
	case "kind":
		return s.keep(&e.kind, false)
	case "source":
		return s.keep(&e.source, false)
	case "timestamp":
		return s.keep(&e.ts, false)
	case "payload":
		return e.payload(s)
	default:
		return s.value(1)
	}
}

// payload reads the payload's value, keeping its metadata.idempotency_key.
func (e *echo) payload(s *echoScanner) error {
	e.payloadSet, e.payloadObj, e.metadataIsObj, e.gotKey = true, false, false, kept{}
	c, err := s.token()
	if err != nil || c != '{' {
		return s.valueFrom(c, err, 1)
	}
	e.payloadObj = true
	return s.object(func(name []byte) error {
		if string(name) != "metadata" {
			return s.value(2)
		}
		e.metadataIsObj, e.gotKey = false, kept{}
		c, err := s.token()
		if err != nil || c != '{' {
			return s.valueFrom(c, err, 2)
		}
		e.metadataIsObj = true
		return s.object(func(name []byte) error {
			if string(name) != "idempotency_key" {
				return s.value(3)
			}
			return s.keep(&e.gotKey, false)
		})
	})
}

// check holds the echo to the contract and to key, and returns its
// event_id.
func (e *echo) check(key string) (int64, error) {
	var err error
	switch {
	case !e.id.num || !isPositiveInt(e.id.text):
		err = e.id.invalid("event_id", "an integer >= 1")
	case !e.hash.isHash():
		err = e.hash.invalid("hash", "64 lower-case hex digits")
	case !e.prev.isHash():
		err = e.prev.invalid("prev_hash", "64 lower-case hex digits")
	case !e.kind.nonEmpty():
		err = e.kind.invalid("kind", "a non-empty string")
	case !e.source.nonEmpty():
		err = e.source.invalid("source", "a non-empty string")
	case !e.ts.nonEmpty():
		err = e.ts.invalid("timestamp", "a non-empty string")
	case !e.payloadSet || !e.payloadObj:
		err = errors.New("the answer has no payload object")
	case !e.metadataIsObj || !e.gotKey.str:
		err = fmt.Errorf("%w: the answer's payload has no metadata.idempotency_key", errOtherEvent)
	case e.gotKey.long || e.gotKey.text != key:
		err = fmt.Errorf("%w: the answer is event %q, not %q", errOtherEvent, e.gotKey.show(), key)
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(e.id.text, 10, 64)
	if err != nil {
		return 0, e.id.invalid("event_id", "an integer that fits in 64 bits")
	}
	return n, nil
}

// readers are confirm's buffers, reused: most answers are small, and a
// buffer per answer would cost more than the rest of the check.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// kept is a scalar member confirm checks.
type kept struct {
	set  bool   // the member is present
	str  bool   // its value is a string
	num  bool   // its value is a number
	long bool   // the string is longer than maxKept; text holds its start
	text string // the string's value, or the number's literal
}

func (k kept) isHash() bool   { return k.str && !k.long && isHash(k.text) }
func (k kept) nonEmpty() bool { return k.str && k.text != "" }

// show is the value for an error message.
func (k kept) show() string {
	if !k.str && !k.num {
		return "(neither a string nor a number)"
	}
	return Truncate(k.text, 80)
}

// invalid is the error for member name, whose value is not want.
func (k kept) invalid(name, want string) error {
	if !k.set {
		return fmt.Errorf("the answer has no %s", name)
	}
	return fmt.Errorf("%s %q is not %s", name, k.show(), want)
}

const (
	// maxKept bounds the strings echoScanner keeps: member names and the
	// members confirm checks, all short in the spine's answers.
	maxKept = 4 << 10
	// maxDepth bounds nesting, as encoding/json does.
	maxDepth = 10000
)

// echoScanner reads JSON (RFC 8259) from a stream, validating its syntax as
// it goes and keeping only what it is asked to keep: its memory does not
// grow with the size of what it reads.
type echoScanner struct {
	r       *bufio.Reader
	scratch []byte // reused by str
}

// byte returns the next byte. The answer cannot end inside a value, so
// io.EOF becomes io.ErrUnexpectedEOF.
func (s *echoScanner) byte() (byte, error) {
	c, err := s.r.ReadByte()
	return c, unexpectedEOF(err)
}

// token returns the next byte that is not whitespace.
func (s *echoScanner) token() (byte, error) {
	for {
		c, err := s.byte()
		if err != nil || !isSpace(c) {
			return c, err
		}
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (s *echoScanner) expect(want byte) error {
	c, err := s.token()
	if err != nil {
		return err
	}
	if c != want {
		return fmt.Errorf("invalid JSON: got %q, want %q", c, want)
	}
	return nil
}

// end checks that only whitespace follows the value read.
func (s *echoScanner) end() error {
	for {
		c, err := s.r.ReadByte()
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		case !isSpace(c):
			return fmt.Errorf("data after the event, starting with %q", c)
		}
	}
}

// object reads the members of an object whose '{' has been read, calling
// member with each name; member must read the value.
func (s *echoScanner) object(member func(name []byte) error) error {
	c, err := s.token()
	if err != nil {
		return err
	}
	if c == '}' {
		return nil
	}
	for {
		if c != '"' {
			return fmt.Errorf("invalid JSON: got %q, want a member name", c)
		}
		name, err := s.name()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := member(name); err != nil {
			return err
		}
		if c, err = s.token(); err != nil {
			return err
		}
		switch c {
		case ',':
			if c, err = s.token(); err != nil {
				return err
			}
		case '}':
			return nil
		default:
			return fmt.Errorf("invalid JSON: got %q after an object member", c)
		}
	}
}

// value reads and discards one value nested depth levels deep.
func (s *echoScanner) value(depth int) error {
	c, err := s.token()
	return s.valueFrom(c, err, depth)
}

// valueFrom reads and discards the value starting with c, the result of a
// token call that returned err.
func (s *echoScanner) valueFrom(c byte, err error, depth int) error {
	if err != nil {
		return err
	}
	switch {
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return errors.New("invalid JSON: nested too deeply")
		}
		if c == '{' {
			return s.object(func([]byte) error { return s.value(depth + 1) })
		}
		return s.array(depth + 1)
	case c == '"':
		_, _, err := s.str(false)
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := s.number(c, false)
		return err
	case c == 't':
		return s.literal("rue")
	case c == 'f':
		return s.literal("alse")
	case c == 'n':
		return s.literal("ull")
	}
	return fmt.Errorf("invalid JSON: got %q, want a value", c)
}

// array reads the elements of an array whose '[' has been read.
func (s *echoScanner) array(depth int) error {
	c, err := s.token()
	if err != nil {
		return err
	}
	if c == ']' {
		return nil
	}
	for {
		if err := s.valueFrom(c, nil, depth); err != nil {
			return err
		}
		if c, err = s.token(); err != nil {
			return err
		}
		switch c {
		case ',':
			if c, err = s.token(); err != nil {
				return err
			}
		case ']':
			return nil
		default:
			return fmt.Errorf("invalid JSON: got %q after an array element", c)
		}
	}
}

// keep reads one value into k: a string's value, a number's literal (when
// number is set), or only the fact that it is something else.
func (s *echoScanner) keep(k *kept, number bool) error {
	*k = kept{set: true}
	c, err := s.token()
	switch {
	case err != nil:
		return err
	case c == '"':
		k.str = true
		k.text, k.long, err = s.str(true)
		return err
	case number && (c == '-' || (c >= '0' && c <= '9')):
		k.num = true
		k.text, err = s.number(c, true)
		return err
	}
	return s.valueFrom(c, nil, 1)
}

// str reads a string whose opening quote has been read. With keep it
// returns the string's value, or its first maxKept bytes and long.
func (s *echoScanner) str(keep bool) (text string, long bool, err error) {
	raw, long, escaped, err := s.rawStr(keep)
	switch {
	case err != nil || !keep:
		return "", false, err
	case long || (!escaped && utf8.Valid(raw)):
		return string(raw), long, nil
	}
	v, err := unescape(raw)
	return v, false, err
}

// name reads a member name whose opening quote has been read. The result
// is only valid until the next read.
func (s *echoScanner) name() ([]byte, error) {
	raw, long, escaped, err := s.rawStr(true)
	if err != nil || long || !escaped {
		return raw, err // a long name is none of those looked for
	}
	v, err := unescape(raw)
	return []byte(v), err
}

// unescape decodes the literal of a string with escapes.
func unescape(raw []byte) (string, error) {
	quoted := make([]byte, 0, len(raw)+2)
	quoted = append(append(append(quoted, '"'), raw...), '"')
	var v string
	if err := json.Unmarshal(quoted, &v); err != nil {
		return "", fmt.Errorf("invalid JSON string: %w", err)
	}
	return v, nil
}

// rawStr reads a string whose opening quote has been read, checking its
// syntax. With keep it returns the literal between the quotes (escapes
// undecoded), cut at maxKept bytes (long), in a buffer reused by the next
// call.
func (s *echoScanner) rawStr(keep bool) (raw []byte, long, escaped bool, err error) {
	raw = s.scratch[:0]
	defer func() { s.scratch = raw[:0] }()
	add := func(b []byte) {
		if keep && !long {
			raw = append(raw, b...)
			if len(raw) > maxKept {
				raw, long = raw[:maxKept], true
			}
		}
	}
	for {
		// Plain characters are taken in runs, straight from the buffer.
		if s.r.Buffered() == 0 {
			if _, err := s.r.Peek(1); err != nil {
				return nil, false, false, unexpectedEOF(err)
			}
		}
		buf, _ := s.r.Peek(s.r.Buffered())
		i := 0
		for i < len(buf) && buf[i] != '"' && buf[i] != '\\' && buf[i] >= 0x20 {
			i++
		}
		add(buf[:i])
		_, _ = s.r.Discard(i) // buffered: cannot fail
		if i == len(buf) {
			continue
		}
		c, _ := s.r.ReadByte()
		switch {
		case c == '"':
			return raw, long, escaped, nil
		case c == '\\':
			e, err := s.byte()
			if err != nil {
				return nil, false, false, err
			}
			esc := [6]byte{c, e}
			n := 2
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for ; n < 6; n++ {
					h, err := s.byte()
					if err != nil {
						return nil, false, false, err
					}
					if !isHex(h) {
						return nil, false, false, fmt.Errorf("invalid JSON: %q in a \\u escape", h)
					}
					esc[n] = h
				}
			default:
				return nil, false, false, fmt.Errorf("invalid JSON: escape \\%c", e)
			}
			add(esc[:n])
			escaped = true
		default:
			return nil, false, false, fmt.Errorf("invalid JSON: control character %#x in a string", c)
		}
	}
}

// unexpectedEOF turns io.EOF into io.ErrUnexpectedEOF: the answer ended
// inside a value.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// number reads a number whose first byte, c, has been read, and with keep
// returns its literal (at most maxKept bytes of it).
func (s *echoScanner) number(c byte, keep bool) (string, error) {
	var lit []byte
	add := func(b byte) {
		if keep && len(lit) < maxKept {
			lit = append(lit, b)
		}
	}
	add(c)
	var err error
	if c == '-' {
		if c, err = s.byte(); err != nil {
			return "", err
		}
		if c < '0' || c > '9' {
			return "", fmt.Errorf("invalid JSON: %q in a number", c)
		}
		add(c)
	}
	if c != '0' {
		if _, err := s.digits(add); err != nil {
			return "", err
		}
	}
	if c, err = s.byte(); err != nil {
		return "", err
	}
	if c == '.' {
		add(c)
		if n, err := s.digits(add); err != nil {
			return "", err
		} else if n == 0 {
			return "", errors.New("invalid JSON: no digit after '.' in a number")
		}
		if c, err = s.byte(); err != nil {
			return "", err
		}
	}
	if c == 'e' || c == 'E' {
		add(c)
		if c, err = s.byte(); err != nil {
			return "", err
		}
		if c == '+' || c == '-' {
			add(c)
		} else if err := s.r.UnreadByte(); err != nil {
			return "", err
		}
		if n, err := s.digits(add); err != nil {
			return "", err
		} else if n == 0 {
			return "", errors.New("invalid JSON: no digit in a number's exponent")
		}
		if _, err = s.byte(); err != nil {
			return "", err
		}
	}
	// The byte read last follows the number: leave it for the caller.
	if err := s.r.UnreadByte(); err != nil {
		return "", err
	}
	return string(lit), nil
}

// digits reads decimal digits up to the next other byte, which it leaves
// unread.
func (s *echoScanner) digits(add func(byte)) (int, error) {
	for n := 0; ; n++ {
		c, err := s.byte()
		if err != nil {
			return n, err
		}
		if c < '0' || c > '9' {
			return n, s.r.UnreadByte()
		}
		add(c)
	}
}

// literal reads the rest of true, false or null.
func (s *echoScanner) literal(rest string) error {
	for i := 0; i < len(rest); i++ {
		c, err := s.byte()
		if err != nil {
			return err
		}
		if c != rest[i] {
			return fmt.Errorf("invalid JSON: %q in a literal", c)
		}
	}
	return nil
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isPositiveInt(s string) bool {
	if s == "" || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
