package metrics

import (
	"errors"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestNewRegistersEveryFamily: every metric field of Metrics is made and
// registered by New, once.
func TestNewRegistersEveryFamily(t *testing.T) {
	m := New()
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || name == "Registry" {
			continue
		}
		if v.Field(i).IsNil() {
			t.Errorf("%s is not made", name)
			continue
		}
		var are prometheus.AlreadyRegisteredError
		if err := m.Registry.Register(c); !errors.As(err, &are) {
			t.Errorf("%s is not registered (Register again: %v)", name, err)
		}
	}
	if _, err := m.Registry.Gather(); err != nil {
		t.Fatal(err)
	}
}
