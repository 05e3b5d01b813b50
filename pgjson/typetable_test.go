package pgjson_test

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

var updateTypeTable = flag.Bool("update", false, "rewrite the generated type table section of the documentation")

const (
	typeTableStart = "<!-- type-table:start -->"
	typeTableEnd   = "<!-- type-table:end -->"
)

// typeTableDoc returns the file that holds the generated type table: the
// envelope specification, docs/envelope.md.
func typeTableDoc(t *testing.T) string {
	t.Helper()
	return filepath.Join("..", "docs", "envelope.md")
}

// TestTypeTableExamples runs every example of pgjson.TypeTable through
// AppendValue, so the documented mapping is the implemented one, and checks
// that the example's JSON is already what the spine stores.
func TestTypeTableExamples(t *testing.T) {
	for _, row := range pgjson.TypeTable {
		if row.Types == "" || row.JSON == "" || len(row.Examples) == 0 {
			t.Errorf("row %q: got an empty field or no example, want types, JSON and examples", row.Types)
		}
		for _, ex := range row.Examples {
			t.Run(row.Types+"/"+ex.SQLType+"/"+ex.Text, func(t *testing.T) {
				typ := ex.Type
				switch {
				case typ != nil && ex.OID != 0:
					t.Fatalf("got both OID %d and Type %s, want one of them", ex.OID, typ.Name)
				case typ == nil:
					var ok bool
					typ, ok = pgjson.Builtin(ex.OID)
					if !ok {
						t.Fatalf("Builtin(%d): not a built-in type", ex.OID)
					}
				}
				got, err := pgjson.AppendValue(nil, typ, []byte(ex.Text))
				if err != nil {
					t.Fatalf("AppendValue(%s, %q): got error %v, want %s", typ.Name, ex.Text, err, ex.JSON)
				}
				if string(got) != ex.JSON {
					t.Fatalf("AppendValue(%s, %q): got %s, want %s", typ.Name, ex.Text, got, ex.JSON)
				}
				dec := json.NewDecoder(strings.NewReader(ex.JSON))
				dec.UseNumber()
				var v any
				if err := dec.Decode(&v); err != nil {
					t.Fatalf("example JSON %s: %v", ex.JSON, err)
				}
				canon, err := spinetest.Canonical(v)
				if err != nil {
					t.Fatalf("canonical form of %s: %v", ex.JSON, err)
				}
				if string(canon) != ex.JSON {
					t.Fatalf("the spine stores %s as %s: want examples in the stored form", ex.JSON, canon)
				}
			})
		}
	}
}

// TestTypeTableDoc checks that the documentation's generated section is
// TypeTableMarkdown; -update rewrites it.
func TestTypeTableDoc(t *testing.T) {
	path := typeTableDoc(t)
	want := pgjson.TypeTableMarkdown()
	b, err := os.ReadFile(path)
	if err != nil && !(errors.Is(err, os.ErrNotExist) && *updateTypeTable) {
		t.Fatalf("reading %s: %v (run `go test ./pgjson -run TypeTable -update` to create it)", path, err)
	}
	doc := string(b)
	start := strings.Index(doc, typeTableStart)
	end := strings.Index(doc, typeTableEnd)
	if *updateTypeTable {
		var out string
		switch {
		case doc == "":
			out = "# The envelope\n\n## Type mapping\n\nHow each PostgreSQL type appears in an event.\n\n" +
				typeTableStart + "\n" + want + typeTableEnd + "\n"
		case start < 0 || end < start:
			t.Fatalf("%s: got no %s ... %s section, want one to rewrite", path, typeTableStart, typeTableEnd)
		default:
			out = doc[:start+len(typeTableStart)] + "\n" + want + doc[end:]
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote the type table in %s", path)
		return
	}
	if start < 0 || end < start {
		t.Fatalf("%s: got no %s ... %s section, want the generated type table: run `go test ./pgjson -run TypeTable -update`", path, typeTableStart, typeTableEnd)
	}
	got := strings.TrimPrefix(doc[start+len(typeTableStart):end], "\n")
	if got != want {
		t.Fatalf("%s: the type table differs from pgjson.TypeTable: run `go test ./pgjson -run TypeTable -update`\n%s", path, firstDiff(got, want))
	}
}

// firstDiff describes the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\ngot  %q\nwant %q", i+1, gl, wl)
		}
	}
	return "(they differ only in line endings)"
}

// TestTypeTableMarkdownCells checks that examples cannot break the table.
func TestTypeTableMarkdownCells(t *testing.T) {
	for _, line := range strings.Split(pgjson.TypeTableMarkdown(), "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "|---") {
			continue
		}
		cells := 0
		for i := 0; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++
			case '|':
				cells++
			}
		}
		if cells != 4 {
			t.Errorf("got %d unescaped '|' in %q, want 4 (three cells)", cells, line)
		}
	}
}
