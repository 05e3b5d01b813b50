package cli

import "testing"

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "512KiB": 512 << 10, "8MiB": 8 << 20, "10 GiB": 10 << 30, "1TiB": 1 << 40, "7B": 7} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
		var again byteSize
		if err := again.Set(b.String()); err != nil || again != b {
			t.Errorf("String() of %q is %q, which reads back as %d, %v", in, b.String(), again, err)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "8MB", "1.5GiB", "99999999999TiB"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) accepted %d", in, b)
		}
	}
}
