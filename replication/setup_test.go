package replication

import "testing"

func TestValidateSlotName(t *testing.T) {
	for _, ok := range []string{"pgaudit_cdc", "a", "slot_2"} {
		if err := ValidateSlotName(ok); err != nil {
			t.Errorf("ValidateSlotName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "Upper", "with-dash", "sp ace", "x'; DROP", string(make([]byte, 64))} {
		if err := ValidateSlotName(bad); err == nil {
			t.Errorf("ValidateSlotName(%q) = nil, want an error", bad)
		}
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{{"0/0", 0}, {"16/B374D848", 0x16B374D848}, {"FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF}}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if err != nil || uint64(got) != tt.want || got.String() != tt.in {
			t.Errorf("ParseLSN(%q) = %v (%s), %v; want %X", tt.in, got, got, err, tt.want)
		}
	}
	if _, err := ParseLSN("nope"); err == nil {
		t.Errorf("ParseLSN(nope) succeeded")
	}
}
