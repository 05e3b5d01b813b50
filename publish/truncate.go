package publish

import "unicode/utf8"

// Truncate returns s if it is at most n bytes long; otherwise its first n
// bytes or fewer, cut at a rune boundary so that no UTF-8 character is
// split, followed by "…". It shortens spine answers for errors and logs.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	n = max(n, 0)
	// Back up to the start of the rune that byte n belongs to: at most
	// utf8.UTFMax-1 bytes, so that invalid UTF-8 is cut near n too.
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			n = i
			break
		}
	}
	return s[:n] + "…"
}
