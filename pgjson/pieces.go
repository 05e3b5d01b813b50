package pgjson

import "unicode/utf8"

// AppendValuePieces is AppendValue of a large value converted piece by
// piece (about piece bytes each), calling done with each piece of text once
// its JSON is appended, so that the caller can drop those bytes while the
// rest is converted (package mapped). The JSON is AppendValue's. It
// converts text kinds and bytea; for the other kinds ok is false and
// nothing is appended. On an error dst is returned unchanged.
func AppendValuePieces(dst []byte, t *Type, text []byte, piece int, done func([]byte)) (out []byte, ok bool, err error) {
	piece = max(piece, 4)
	kind := KindText
	if t != nil {
		kind = t.Kind
	}
	switch kind {
	case KindText:
		dst = append(dst, '"')
		for len(text) > 0 {
			n := cutAtCharacter(text, piece)
			dst = appendStringBody(dst, text[:n])
			done(text[:n])
			text = text[n:]
		}
		return append(dst, '"'), true, nil
	case KindBytea:
		if len(text) < 2 || text[0] != '\\' || text[1] != 'x' || len(text)%2 != 0 {
			return dst, true, malformed(t, text, "not a hex bytea")
		}
		out = append(dst, `"\\x`...)
		for rest := text[2:]; len(rest) > 0; {
			n := min(piece, len(rest))
			for _, c := range rest[:n] {
				if !isDigit(c) && (c|0x20 < 'a' || c|0x20 > 'f') {
					return dst, true, malformed(t, text, "not a hex bytea")
				}
			}
			out = append(out, rest[:n]...)
			done(rest[:n])
			rest = rest[n:]
		}
		return append(out, '"'), true, nil
	}
	return dst, false, nil
}

// cutAtCharacter returns where to end a piece of s of about n bytes so that
// converting the pieces one by one gives what converting s whole does: not
// inside a UTF-8 sequence. A byte that is no continuation byte starts
// something new; four continuation bytes in a row end any sequence before
// them.
func cutAtCharacter(s []byte, n int) int {
	if n >= len(s) {
		return len(s)
	}
	for k := n; k > n-utf8.UTFMax && k > 0; k-- {
		if s[k]&0xc0 != 0x80 {
			return k
		}
	}
	return n
}
