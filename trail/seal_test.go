package trail

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// TestSealCanonical: the seal's own encoder writes what envelope.Canonical
// writes of it, whatever its fields hold (every field set by reflection,
// so that a field added later and not encoded fails here).
func TestSealCanonical(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 8))
	word := func() string {
		runes := []rune{'a', 'Z', '0', ':', '"', '\\', '\n', 0x7f, 0xe9, 0x2028, 0x1f600, '/', ' '}
		out := make([]rune, r.IntN(12))
		for i := range out {
			out[i] = runes[r.IntN(len(runes))]
		}
		return string(out)
	}
	for range 300 {
		var s Seal
		v := reflect.ValueOf(&s).Elem()
		for i := range v.NumField() {
			f := v.Field(i)
			switch f.Kind() {
			case reflect.String:
				f.SetString(word())
			case reflect.Uint64:
				f.SetUint(r.Uint64() >> r.IntN(64))
			case reflect.Map:
				m := map[string]string{}
				for range r.IntN(4) {
					m[word()] = word()
				}
				f.Set(reflect.ValueOf(m))
			default:
				t.Fatalf("field %s of kind %s: teach this test and Seal.canonical about it", v.Type().Field(i).Name, f.Kind())
			}
		}
		got, err := s.canonical()
		if err != nil {
			t.Fatal(err)
		}
		want, err := envelope.Canonical(&s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("seal %+v:\n got %s\nwant %s", s, got, want)
		}
	}
}
