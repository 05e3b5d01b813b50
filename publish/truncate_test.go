package publish

import (
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…"},
		{"abcd", 0, "…"},
		{"abcd", -1, "…"},
		{"héllo", 2, "h…"},  // é is 2 bytes: not cut in half
		{"héllo", 3, "hé…"}, // the whole é fits
		{"héllo", 6, "héllo"},
		{"日本語", 4, "日…"}, // 3-byte runes
		{"日本語", 5, "日…"},
		{"日本語", 6, "日本…"},
		{"a😀b", 3, "a…"}, // a 4-byte rune
		{"a😀b", 4, "a…"},
		{"a😀b", 5, "a😀…"},
		{"ab\xff\xffcd", 3, "ab\xff…"}, // invalid UTF-8 is cut where it is
		{"a\x80\x80\x80\x80\x80\x80", 5, "a\x80\x80\x80\x80…"},
	} {
		got := Truncate(tc.s, tc.n)
		if got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if utf8.ValidString(tc.s) && !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q: not valid UTF-8", tc.s, tc.n, got)
		}
	}
}
