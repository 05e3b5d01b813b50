package ident

import "testing"

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"decisions": "decisions",
		"_t1":       "_t1",
		"Decisions": `"Decisions"`,
		"1t":        `"1t"`,
		"a b":       `"a b"`,
		`say "hi"`:  `"say ""hi"""`,
		"":          `""`,
		"é":         `"é"`,
		"a.b":       `"a.b"`,
		"tab\tname": "\"tab\tname\"",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
	if got := Qualified("public", "Order Items"); got != `public."Order Items"` {
		t.Errorf("Qualified: %s", got)
	}
}

func TestSQL(t *testing.T) {
	for _, c := range []struct {
		parts []string
		want  string
	}{
		{[]string{"select"}, `"select"`},
		{[]string{"public", "t"}, `"public"."t"`},
		{[]string{`a"b`}, `"a""b"`},
		{[]string{"x\x00y"}, `"xy"`},
	} {
		if got := SQL(c.parts...); got != c.want {
			t.Errorf("SQL(%q) = %s, want %s", c.parts, got, c.want)
		}
	}
}
