package metrics

import (
	"errors"
	"os"
	"reflect"
	"regexp"
	"strings"
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

// TestEveryFamilyIsDocumented: docs/operations.md lists every metric
// family, so that an operator finds each one they scrape.
func TestEveryFamilyIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	descs := make(chan *prometheus.Desc, 1024)
	m := New()
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if c, ok := v.Field(i).Interface().(prometheus.Collector); ok && v.Type().Field(i).Name != "Registry" {
			c.Describe(descs)
		}
	}
	close(descs)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	n := 0
	for d := range descs {
		got := name.FindStringSubmatch(d.String())
		if got == nil {
			t.Fatalf("no name in %s", d)
		}
		n++
		if !strings.Contains(string(doc), "| `"+got[1]+"` |") {
			t.Errorf("%s is not in docs/operations.md's table of metrics", got[1])
		}
	}
	if n < 30 {
		t.Fatalf("only %d families described", n)
	}
	// And those registered beside the fields (build_info).
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "pgaudit_cdc_") && !strings.Contains(string(doc), "| `"+f.GetName()+"` |") {
			t.Errorf("%s is not in docs/operations.md's table of metrics", f.GetName())
		}
	}
}
