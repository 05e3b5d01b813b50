package envelope

import "testing"

// FuzzParseKey: keys come back from the spine, which anyone may write to;
// parsing never panics, and what parses is what Key makes.
func FuzzParseKey(f *testing.F) {
	f.Add(Key("7301", "pgaudit_cdc", Position{CommitLSN: 0x1A2B3C8, Seq: 5}))
	f.Add(Key("7301", "pgaudit_cdc.g2", Position{CommitLSN: 1, Seq: 0}))
	f.Add("pgaudit-cdc:::0:0")
	f.Add("pgaudit-cdc:1:s:ffffffffffffffffff:1")
	f.Fuzz(func(t *testing.T, key string) {
		sys, slot, pos, ok := ParseKey(key)
		if ok && Key(sys, slot, pos) != key {
			// Different spellings of the same numbers (leading zeros,
			// upper-case hex) parse too; the key Key makes must parse back.
			sys2, slot2, pos2, ok2 := ParseKey(Key(sys, slot, pos))
			if !ok2 || sys2 != sys || slot2 != slot || pos2 != pos {
				t.Fatalf("ParseKey(Key(%q)) does not round-trip", key)
			}
		}
		if p, ok := ParsePosition(key); ok {
			if q, ok := ParsePosition(p.String()); !ok || q != p {
				t.Fatalf("ParsePosition(%q).String() does not round-trip", key)
			}
		}
	})
}
