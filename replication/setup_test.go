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
