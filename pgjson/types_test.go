package pgjson

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// goldenRow is one line of testdata/pg15_builtin_types.txt.
type goldenRow struct {
	oid      uint32
	name     string
	typtype  string
	category string
	array    uint32
	delim    byte
	elem     uint32
}

func loadGolden(t *testing.T) map[uint32]goldenRow {
	t.Helper()
	f, err := os.Open("testdata/pg15_builtin_types.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows := make(map[uint32]goldenRow)
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fs := strings.Fields(text)
		if len(fs) != 7 || len(fs[5]) != 1 {
			t.Fatalf("line %d: bad row %q", line, text)
		}
		num := func(s string) uint32 {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				t.Fatalf("line %d: %v", line, err)
			}
			return uint32(v)
		}
		r := goldenRow{oid: num(fs[0]), name: fs[1], typtype: fs[2], category: fs[3], array: num(fs[4]), delim: fs[5][0], elem: num(fs[6])}
		rows[r.oid] = r
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 150 {
		t.Fatalf("golden list has %d rows, want at least 150", len(rows))
	}
	return rows
}

func delimOf(t *Type) byte {
	if t.Delim == 0 {
		return ','
	}
	return t.Delim
}

// TestBuiltinGolden checks Builtin against the pg_type rows of a
// real PostgreSQL 15 server, both ways.
func TestBuiltinGolden(t *testing.T) {
	golden := loadGolden(t)
	for _, r := range golden {
		t.Run(r.name, func(t *testing.T) {
			// A true array type is the one its element names as typarray;
			// int2vector, oidvector, name, point... have typelem but are not.
			elemRow, elemKnown := golden[r.elem]
			isArray := r.elem != 0 && elemKnown && elemRow.array == r.oid
			if r.elem != 0 && !elemKnown {
				// Arrays of pseudo-types (cstring) or of catalog row types
				// (pg_class...) are left to the catalog resolver.
				if got, ok := Builtin(r.oid); ok {
					t.Fatalf("got %v, want not found (element %d is not a built-in base type)", got.Name, r.elem)
				}
				return
			}
			got, ok := Builtin(r.oid)
			if !ok {
				t.Fatalf("got not found, want %s", r.name)
			}
			if got.OID != r.oid || got.Name != r.name {
				t.Fatalf("got %d %q, want %d %q", got.OID, got.Name, r.oid, r.name)
			}
			if isArray {
				if got.Kind != KindArray || got.Elem == nil {
					t.Fatalf("got kind %d, want KindArray with Elem", got.Kind)
				}
				if got.Elem.OID != r.elem {
					t.Fatalf("got elem %d, want %d", got.Elem.OID, r.elem)
				}
				if d := delimOf(got); d != r.delim || d != elemRow.delim {
					t.Fatalf("got delim %q, want %q", d, elemRow.delim)
				}
				return
			}
			if got.Kind == KindArray || got.Kind == KindComposite || got.Elem != nil || got.Fields != nil {
				t.Fatalf("got kind %d elem %v, want a scalar kind", got.Kind, got.Elem)
			}
			if r.array != 0 {
				arr, ok := Builtin(r.array)
				if !ok || arr.Kind != KindArray || arr.Elem != got {
					t.Fatalf("got array %d = %v, want KindArray of this type", r.array, arr)
				}
			}
		})
	}
	t.Run("no_extra_oids", func(t *testing.T) {
		for oid := uint32(0); oid < 70000; oid++ {
			if got, ok := Builtin(oid); ok {
				if _, in := golden[oid]; !in {
					t.Errorf("got %d (%s), want not found: not in the golden list", oid, got.Name)
				}
			}
		}
	})
}

// TestBuiltinKinds pins the kind of the types that are not plain text.
func TestBuiltinKinds(t *testing.T) {
	tests := []struct {
		oid  uint32
		name string
		kind TypeKind
		elem uint32
	}{
		{16, "bool", KindBool, 0},
		{17, "bytea", KindBytea, 0},
		{18, "char", KindText, 0},
		{19, "name", KindText, 0},
		{20, "int8", KindInteger, 0},
		{21, "int2", KindInteger, 0},
		{22, "int2vector", KindText, 0},
		{23, "int4", KindInteger, 0},
		{24, "regproc", KindText, 0},
		{25, "text", KindText, 0},
		{26, "oid", KindInteger, 0},
		{27, "tid", KindText, 0},
		{28, "xid", KindText, 0},
		{29, "cid", KindText, 0},
		{30, "oidvector", KindText, 0},
		{114, "json", KindJSON, 0},
		{142, "xml", KindText, 0},
		{603, "box", KindText, 0},
		{700, "float4", KindFloat, 0},
		{701, "float8", KindFloat, 0},
		{790, "money", KindText, 0},
		{869, "inet", KindText, 0},
		{1042, "bpchar", KindText, 0},
		{1043, "varchar", KindText, 0},
		{1082, "date", KindDate, 0},
		{1083, "time", KindTime, 0},
		{1114, "timestamp", KindTimestamp, 0},
		{1184, "timestamptz", KindTimestampTZ, 0},
		{1186, "interval", KindText, 0},
		{1266, "timetz", KindTimeTZ, 0},
		{1560, "bit", KindText, 0},
		{1700, "numeric", KindNumeric, 0},
		{2950, "uuid", KindText, 0},
		{3220, "pg_lsn", KindText, 0},
		{3614, "tsvector", KindText, 0},
		{3802, "jsonb", KindJSON, 0},
		{3904, "int4range", KindText, 0},
		{4451, "int4multirange", KindText, 0},
		{5069, "xid8", KindText, 0},
		{1000, "_bool", KindArray, 16},
		{1007, "_int4", KindArray, 23},
		{1009, "_text", KindArray, 25},
		{1020, "_box", KindArray, 603},
		{1231, "_numeric", KindArray, 1700},
		{199, "_json", KindArray, 114},
		{3807, "_jsonb", KindArray, 3802},
		{3905, "_int4range", KindArray, 3904},
		{6150, "_int4multirange", KindArray, 4451},
		{271, "_xid8", KindArray, 5069},
		{1006, "_int2vector", KindArray, 22},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Builtin(tc.oid)
			if !ok {
				t.Fatalf("got not found, want %s", tc.name)
			}
			if got.Name != tc.name || got.Kind != tc.kind {
				t.Fatalf("got %s kind %d, want %s kind %d", got.Name, got.Kind, tc.name, tc.kind)
			}
			if tc.elem != 0 && (got.Elem == nil || got.Elem.OID != tc.elem) {
				t.Fatalf("got elem %v, want %d", got.Elem, tc.elem)
			}
		})
	}
	for _, oid := range []uint32{0, 71, 210, 1263, 2249, 2275, 2287, 10000, 16384, 1<<32 - 1} {
		if got, ok := Builtin(oid); ok {
			t.Errorf("Builtin(%d): got %s, want not found", oid, got.Name)
		}
	}
	if bx, _ := Builtin(1020); bx.Delim != ';' {
		t.Errorf("_box delim: got %q, want ';'", bx.Delim)
	}
}
