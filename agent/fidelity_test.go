package agent_test

// Fidelity tests (issue 3, "Faithful row data"): every value, shape and
// operation is checked on what the spine double stored, i.e. after its
// Python-style re-serialisation, in the canonical form the spine hashes
// (sorted keys, ASCII with \u escapes, Python's float repr).

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// stored returns v as the spine stores and hashes it.
func stored(t *testing.T, v any) string {
	t.Helper()
	b, err := spinetest.Canonical(v)
	if err != nil {
		t.Fatalf("canonical JSON of %#v: %v", v, err)
	}
	return string(b)
}

// byTable groups events by payload.table, keeping their order.
func byTable(t *testing.T, evs []spinetest.Event) map[string][]spinetest.Event {
	t.Helper()
	m := map[string][]spinetest.Event{}
	for _, e := range evs {
		name, _ := field(t, e, "table").(string)
		m[name] = append(m[name], e)
	}
	return m
}

// ops lists the operations of evs.
func ops(t *testing.T, evs []spinetest.Event) string {
	t.Helper()
	var s []string
	for _, e := range evs {
		s = append(s, fmt.Sprint(field(t, e, "operation")))
	}
	return strings.Join(s, " ")
}

// metadata returns payload.metadata.
func metadata(t *testing.T, e spinetest.Event) map[string]any {
	t.Helper()
	m, _ := field(t, e, "metadata").(map[string]any)
	return m
}

// expectRow checks that payload[key] of e is, as stored, exactly want (a
// canonical JSON object), or absent when want is "".
func expectRow(t *testing.T, e spinetest.Event, key, want string) {
	t.Helper()
	v, present := e.Payload[key]
	switch {
	case want == "" && present:
		t.Errorf("event %d (%v): got %s %s, want no %q", e.EventID, field(t, e, "operation"), key, stored(t, v), key)
	case want == "":
	case !present:
		t.Errorf("event %d (%v): got no %q, want %s", e.EventID, field(t, e, "operation"), key, want)
	default:
		if got := stored(t, v); got != want {
			t.Errorf("event %d (%v) %s:\ngot  %s\nwant %s", e.EventID, field(t, e, "operation"), key, got, want)
		}
	}
}

// cell is one column value of a type family row: a SQL expression and the
// JSON the spine must hold for it.
type cell struct{ lit, want string }

// typeFamily is one table of TestFidelityTypes: columns c1..cN of the given
// types, the rows to insert and what each value must become. A row of NULLs
// is added; the first row is updated to the second row's values (so "old"
// is checked too) and the NULL row is deleted.
type typeFamily struct {
	name  string
	setup []string
	types []string
	rows  [][]cell
}

func (f typeFamily) table() string { return "fam_" + f.name }

func (f typeFamily) columns() string {
	var c []string
	for i := range f.types {
		c = append(c, fmt.Sprintf("c%d", i+1))
	}
	return strings.Join(c, ", ")
}

func (f typeFamily) nullRow() []cell {
	r := make([]cell, len(f.types))
	for i := range r {
		r[i] = cell{"NULL", "null"}
	}
	return r
}

// want is the canonical JSON of the row with the given id and cells.
func (f typeFamily) want(id int, row []cell) string {
	type kv struct{ k, v string }
	kvs := []kv{{"id", strconv.Itoa(id)}}
	for i, c := range row {
		kvs = append(kvs, kv{fmt.Sprintf("c%d", i+1), c.want})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].k < kvs[j].k })
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range kvs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", p.k, p.v)
	}
	b.WriteByte('}')
	return b.String()
}

// checkRow compares a stored row with the family's cells column by column,
// so that a failure names the type and the literal.
func (f typeFamily) checkRow(t *testing.T, e spinetest.Event, key string, id int, row []cell) {
	t.Helper()
	got, ok := e.Payload[key].(map[string]any)
	if !ok {
		t.Errorf("event %d: got %s = %v, want an object", e.EventID, key, e.Payload[key])
		return
	}
	if len(got) != len(row)+1 {
		t.Errorf("event %d %s: got %s, want the columns of %s", e.EventID, key, stored(t, got), f.want(id, row))
	}
	if g := stored(t, got["id"]); g != strconv.Itoa(id) {
		t.Errorf("event %d %s: got id %s, want %d", e.EventID, key, g, id)
	}
	for i, c := range row {
		col := fmt.Sprintf("c%d", i+1)
		v, present := got[col]
		if !present {
			t.Errorf("event %d %s: %s (%s) missing", e.EventID, key, col, f.types[i])
			continue
		}
		if g := stored(t, v); g != c.want {
			t.Errorf("%s %s %s = %s:\ngot  %s\nwant %s", key, col, f.types[i], c.lit, g, c.want)
		}
	}
}

func typeFamilies() []typeFamily {
	kib := strings.Repeat("ab", 1000)
	deep := strings.Repeat("[", 300) + strings.Repeat("]", 300)
	return []typeFamily{
		{name: "integers", types: []string{"int2", "int4", "int8", "oid"}, rows: [][]cell{
			{{"-32768", "-32768"}, {"-2147483648", "-2147483648"}, {"-9223372036854775808", "-9223372036854775808"}, {"0", "0"}},
			{{"32767", "32767"}, {"2147483647", "2147483647"}, {"9223372036854775807", "9223372036854775807"}, {"4294967295", "4294967295"}},
			{{"0", "0"}, {"-1", "-1"}, {"9007199254740993", "9007199254740993"}, {"1", "1"}},
		}},
		{name: "floats", types: []string{"float4", "float8"}, rows: [][]cell{
			{{"'NaN'", `"NaN"`}, {"'Infinity'", `"Infinity"`}},
			{{"'-Infinity'", `"-Infinity"`}, {"'-0'", "-0.0"}},
			{{"'1.5e-07'", "1.5e-07"}, {"'1.5e-07'", "1.5e-07"}},
			{{"'-0'", "-0.0"}, {"'NaN'", `"NaN"`}},
			{{"'3.4028235e+38'", "3.4028235e+38"}, {"'1.7976931348623157e+308'", "1.7976931348623157e+308"}},
			{{"'0.1'", "0.1"}, {"'2.2250738585072014e-308'", "2.2250738585072014e-308"}},
			{{"'-1.5'", "-1.5"}, {"'5e-324'", "5e-324"}},
			// An integral float is sent as PostgreSQL writes it: 100 stays
			// an integer for the spine, 1e+15 becomes a Python float. Both
			// keep the exact value.
			{{"'100'", "100"}, {"'1e15'", "1000000000000000.0"}},
			{{"'1.17549435e-38'", "1.1754944e-38"}, {"'0.30000000000000004'", "0.30000000000000004"}},
		}},
		{name: "numeric", types: []string{"numeric", "numeric(12,2)"}, rows: [][]cell{
			{{"'NaN'", `"NaN"`}, {"12.5", `"12.50"`}},
			{{"'Infinity'", `"Infinity"`}, {"-0.005", `"-0.01"`}},
			{{"'-Infinity'", `"-Infinity"`}, {"9999999999.99", `"9999999999.99"`}},
			{{"1234567890123456789012345678901234567890", `"1234567890123456789012345678901234567890"`}, {"0", `"0.00"`}},
			{{"-0.1234567890123456789012345678901234567890", `"-0.1234567890123456789012345678901234567890"`}, {"0.1", `"0.10"`}},
			{{"1e-20", `"0.00000000000000000001"`}, {"'-0.0'", `"0.00"`}},
			{{"9007199254740993.000000000000000001", `"9007199254740993.000000000000000001"`}, {"'1E3'", `"1000.00"`}},
		}},
		{name: "money", types: []string{"money"}, rows: [][]cell{
			{{"1234.56", `"$1,234.56"`}},
			{{"-1234.56", `"-$1,234.56"`}},
			{{"'92233720368547758.07'", `"$92,233,720,368,547,758.07"`}},
			{{"'-92233720368547758.08'", `"-$92,233,720,368,547,758.08"`}},
		}},
		{name: "bool", types: []string{"bool"}, rows: [][]cell{
			{{"true", "true"}},
			{{"false", "false"}},
		}},
		{name: "text", setup: []string{"CREATE EXTENSION citext"},
			types: []string{"text", "varchar(10)", "char(5)", "name", "citext", `"char"`}, rows: [][]cell{
				{{"'hello'", `"hello"`}, {"'v'", `"v"`}, {"'ab'", `"ab   "`}, {"'n'", `"n"`}, {"'MiXeD'", `"MiXeD"`}, {"'x'", `"x"`}},
				{
					{`E'line1\nline2\t"q" \\ é 😀 \u2028 \x01'`, `"line1\nline2\t\"q\" \\ \u00e9 \ud83d\ude00 \u2028 \u0001"`},
					{"'ünïcødé'", `"\u00fcn\u00efc\u00f8d\u00e9"`},
					{"'é'", `"\u00e9    "`},
					{`'with "quotes"'`, `"with \"quotes\""`},
					{"'ÄÖÜ ß'", `"\u00c4\u00d6\u00dc \u00df"`},
					{`'\'`, `"\\"`},
				},
				{{"''", `""`}, {"''", `""`}, {"''", `"     "`}, {"''", `""`}, {"''", `""`}, {"''", `""`}},
				{{"'  padded  '", `"  padded  "`}, {"' '", `" "`}, {"'a   '", `"a    "`}, {"'Mixed Case'", `"Mixed Case"`}, {"'{\"not\": \"json\"}'", `"{\"not\": \"json\"}"`}, {"'ab'", `"a"`}},
			}},
		{name: "bytea", types: []string{"bytea"}, rows: [][]cell{
			{{`'\x00ff10'`, `"\\x00ff10"`}},
			{{"''", `"\\x"`}},
			{{"'abc'", `"\\x616263"`}},
			{{"decode(repeat('ab', 1000), 'hex')", `"\\x` + kib + `"`}},
		}},
		{name: "uuid", types: []string{"uuid"}, rows: [][]cell{
			{{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`}},
			{{"'00000000-0000-0000-0000-000000000000'", `"00000000-0000-0000-0000-000000000000"`}},
			{{"'{A0EEBC99-9C0B4EF8-BB6D6BB9BD380A11}'", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`}},
		}},
		{name: "json", types: []string{"json", "jsonb"}, rows: [][]cell{
			{
				{`'{"b": 1, "a": [1, 2.50, {"c": null}], "u": "é😀\n"}'`, `{"a":[1,2.5,{"c":null}],"b":1,"u":"\u00e9\ud83d\ude00\n"}`},
				{`'{"b": 1, "a": [1, 2.50, {"c": null}], "u": "é😀\n"}'`, `{"a":[1,2.5,{"c":null}],"b":1,"u":"\u00e9\ud83d\ude00\n"}`},
			},
			// json keeps the literal as written, jsonb normalises numbers
			// (1e2 is 100, an integer); the spine reads every number with
			// a fraction or exponent as a float64.
			{
				{`'[1, "two", 3.0, -0, 1e2, 12345678901234567890, 0.1e-3, true]'`, `[1,"two",3.0,0,100.0,12345678901234567890,0.0001,true]`},
				{`'[1, "two", 3.0, -0, 1e2, 12345678901234567890, 0.1e-3, true]'`, `[1,"two",3.0,0,100,12345678901234567890,0.0001,true]`},
			},
			{{`'"scalar string"'`, `"scalar string"`}, {"'42'", "42"}},
			// A JSON null document cannot be told from SQL NULL.
			{{"'null'", "null"}, {`'{"x": 1e400}'`, `{"x":1` + strings.Repeat("0", 400) + `}`}},
			// A number beyond float64 would reach the spine as Infinity:
			// the document travels as a string instead.
			{{`'{"x": 1e400}'`, `"{\"x\": 1e400}"`}, {"'[]'", "[]"}},
			// Duplicate keys of json: the spine keeps the last, as Python does.
			{{`'{"a": 1, "a": 2}'`, `{"a":2}`}, {`'{"a": 1, "a": 2}'`, `{"a":2}`}},
			// Deeper than the spine's parser allows: sent as a string.
			{{"'" + deep + "'", `"` + deep + `"`}, {"'{}'", "{}"}},
		}},
		{name: "datetime", types: []string{"date", "time", "timetz", "timestamp", "timestamptz"}, rows: [][]cell{
			{{"'2026-11-22'", `"2026-11-22"`}, {"'10:00:00'", `"10:00:00"`}, {"'10:00:00+02'", `"10:00:00+02:00"`},
				{"'2026-11-22 10:00:00'", `"2026-11-22T10:00:00"`}, {"'2026-11-22 10:00:00+02'", `"2026-11-22T08:00:00+00:00"`}},
			{{"'infinity'", `"infinity"`}, {"'24:00:00'", `"24:00:00"`}, {"'23:59:59.999999-12:34:56'", `"23:59:59.999999-12:34:56"`},
				{"'infinity'", `"infinity"`}, {"'-infinity'", `"-infinity"`}},
			{{"'-infinity'", `"-infinity"`}, {"'00:00:00.000001'", `"00:00:00.000001"`}, {"'00:00:00+00'", `"00:00:00+00:00"`},
				{"'-infinity'", `"-infinity"`}, {"'infinity'", `"infinity"`}},
			{{"'0044-03-15 BC'", `"-0043-03-15"`}, {"'12:34:56.5'", `"12:34:56.5"`}, {"'12:00:00-05:30'", `"12:00:00-05:30"`},
				{"'0044-03-15 10:00:00.5 BC'", `"-0043-03-15T10:00:00.5"`}, {"'0001-01-01 00:00:00+00 BC'", `"0000-01-01T00:00:00+00:00"`}},
			{{"'5874897-12-31'", `"5874897-12-31"`}, {"'23:59:59.999999'", `"23:59:59.999999"`}, {"'00:00:00+15:59'", `"00:00:00+15:59"`},
				{"'294276-12-31 23:59:59.999999'", `"294276-12-31T23:59:59.999999"`}, {"'1000-06-15 12:00:00.25+00 BC'", `"-0999-06-15T12:00:00.25+00:00"`}},
			{{"'4713-01-01 BC'", `"-4712-01-01"`}, {"'10:00:00.1'", `"10:00:00.1"`}, {"'10:00:00.123456+05:45'", `"10:00:00.123456+05:45"`},
				{"'2026-01-01 00:00:00.000001'", `"2026-01-01T00:00:00.000001"`}, {"'2026-06-30 23:59:59.5-09:30'", `"2026-07-01T09:29:59.5+00:00"`}},
		}},
		{name: "interval", types: []string{"interval"}, rows: [][]cell{
			{{"'1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds'", `"P1Y2M3DT4H5M6.5S"`}},
			{{"'-1 year -2 mons +3 days -04:05:06'", `"P-1Y-2M3DT-4H-5M-6S"`}},
			{{"'0'", `"PT0S"`}},
			{{"'1 microsecond'", `"PT0.000001S"`}},
			{{"'178000000 years'", `"P178000000Y"`}},
		}},
		{name: "network", types: []string{"inet", "cidr", "macaddr", "macaddr8"}, rows: [][]cell{
			{{"'192.168.0.1/24'", `"192.168.0.1/24"`}, {"'10.0.0.0/8'", `"10.0.0.0/8"`}, {"'08:00:2b:01:02:03'", `"08:00:2b:01:02:03"`}, {"'08:00:2b:01:02:03:04:05'", `"08:00:2b:01:02:03:04:05"`}},
			{{"'::ffff:1.2.3.4'", `"::ffff:1.2.3.4"`}, {"'2001:db8::/32'", `"2001:db8::/32"`}, {"'FF-FF-FF-FF-FF-FF'", `"ff:ff:ff:ff:ff:ff"`}, {"'08002b0102030405'", `"08:00:2b:01:02:03:04:05"`}},
			{{"'10.1.2.3'", `"10.1.2.3"`}, {"'192.168.1'", `"192.168.1.0/24"`}, {"'0800.2b01.0203'", `"08:00:2b:01:02:03"`}, {"'08:00:2b:01:02:03'", `"08:00:2b:ff:fe:01:02:03"`}},
		}},
		{name: "bits", types: []string{"bit(3)", "varbit"}, rows: [][]cell{
			{{"B'101'", `"101"`}, {"B''", `""`}},
			{{"'000'", `"000"`}, {"'1111000011110000'", `"1111000011110000"`}},
		}},
		{name: "textsearch", types: []string{"xml", "tsvector", "tsquery"}, rows: [][]cell{
			{{`'<r a="1">é &amp; ü</r>'`, `"<r a=\"1\">\u00e9 &amp; \u00fc</r>"`}, {`$$'a b' c:1A$$`, `"'a b' 'c':1A"`}, {"'fat & rat | !cat'", `"'fat' & 'rat' | !'cat'"`}},
			{{"'<a/><b/>'", `"<a/><b/>"`}, {"to_tsvector('english', 'The quick brown foxes')", `"'brown':3 'fox':4 'quick':2"`}, {"'a:* & b'", `"'a':* & 'b'"`}},
		}},
		{name: "geometric", types: []string{"point", "line", "lseg", "box", "path", "polygon", "circle"}, rows: [][]cell{
			{{"'(1,2)'", `"(1,2)"`}, {"'{1,-1,0}'", `"{1,-1,0}"`}, {"'[(0,0),(1,1)]'", `"[(0,0),(1,1)]"`}, {"'(0,0),(1,1)'", `"(1,1),(0,0)"`},
				{"'[(0,0),(1,1),(2,0)]'", `"[(0,0),(1,1),(2,0)]"`}, {"'((0,0),(1,1),(1,0))'", `"((0,0),(1,1),(1,0))"`}, {"'<(0,0),1.5>'", `"<(0,0),1.5>"`}},
			{{"'(1.5e-07,-0)'", `"(1.5e-07,-0)"`}, {"'{1,2,3}'", `"{1,2,3}"`}, {"'((0,0),(1,1))'", `"[(0,0),(1,1)]"`}, {"'((2,2),(1,1))'", `"(2,2),(1,1)"`},
				{"'((0,0),(1,1),(2,0))'", `"((0,0),(1,1),(2,0))"`}, {"'(0,0),(1,1),(1,0)'", `"((0,0),(1,1),(1,0))"`}, {"'<(1,2),3>'", `"<(1,2),3>"`}},
		}},
		{name: "ranges", types: []string{"int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange", "int4multirange", "datemultirange"}, rows: [][]cell{
			{{"'[1,5)'", `"[1,5)"`}, {"'(,)'", `"(,)"`}, {"'[1.5,2.5]'", `"[1.5,2.5]"`},
				{`'["2026-01-01 10:00","2026-01-01 11:00")'`, `"[\"2026-01-01 10:00:00\",\"2026-01-01 11:00:00\")"`},
				{`'["2026-01-01 10:00+02",infinity)'`, `"[\"2026-01-01 08:00:00+00\",infinity)"`},
				{"'[2026-01-01,2026-02-01)'", `"[2026-01-01,2026-02-01)"`}, {"'{[1,3),[5,7)}'", `"{[1,3),[5,7)}"`},
				{"'{[2026-01-01,2026-02-01),[2026-03-01,2026-04-01)}'", `"{[2026-01-01,2026-02-01),[2026-03-01,2026-04-01)}"`}},
			{{"'empty'", `"empty"`}, {"'[1,1]'", `"[1,2)"`}, {"'empty'", `"empty"`}, {"'empty'", `"empty"`}, {"'empty'", `"empty"`},
				{"'(2026-01-01,2026-01-05]'", `"[2026-01-02,2026-01-06)"`}, {"'{}'", `"{}"`}, {"'{}'", `"{}"`}},
		}},
		{name: "arrays", types: []string{"int4[]", "text[]", "jsonb[]", "numeric[]", "box[]", "timestamptz[]", "bool[]", "bytea[]"}, rows: [][]cell{
			{
				{"'{{1,2},{3,4}}'", "[[1,2],[3,4]]"},
				{`ARRAY['a"b', 'c,d', '{e}', 'f\g', '', 'NULL', ' s ', 'é']`, `["a\"b","c,d","{e}","f\\g","","NULL"," s ","\u00e9"]`},
				{`ARRAY['{"a": 1}', '[1, 2.50]']::jsonb[]`, `[{"a":1},[1,2.5]]`},
				{"'{1.50,NaN,NULL,-Infinity}'", `["1.50","NaN",null,"-Infinity"]`},
				{"'{(1,1),(0,0);(2,2),(1,1)}'", `["(1,1),(0,0)","(2,2),(1,1)"]`},
				{`'{"2026-01-01 10:00:00+00",infinity}'`, `["2026-01-01T10:00:00+00:00","infinity"]`},
				{"'{t,f,NULL}'", "[true,false,null]"},
				{`ARRAY['\x00ff'::bytea, '']`, `["\\x00ff","\\x"]`},
			},
			{{"'{1,NULL,3}'", "[1,null,3]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}},
			{{"'[0:1]={1,2}'", "[1,2]"}, {"'{NULL}'", "[null]"}, {"ARRAY[NULL]::jsonb[]", "[null]"}, {"'{{1.5},{2.5}}'", `[["1.5"],["2.5"]]`},
				{"'{(1,2),(3,4)}'", `["(3,4),(1,2)"]`}, {"'{{-infinity}}'", `[["-infinity"]]`}, {"'{{t},{f}}'", "[[true],[false]]"}, {"'{NULL}'", "[null]"}},
			{{"'{{{1,2}},{{3,4}}}'", "[[[1,2]],[[3,4]]]"},
				{`ARRAY[E'back\\slash', '"', ',', '{', '}', 'null', E'tab\there']`, `["back\\slash","\"",",","{","}","null","tab\there"]`},
				{`ARRAY['"s"', 'null', '{"k": [1, {"z": true}]}']::jsonb[]`, `["s",null,{"k":[1,{"z":true}]}]`},
				{"ARRAY[1234567890123456789012345678901234567890.5]", `["1234567890123456789012345678901234567890.5"]`},
				{"NULL", "null"}, {"NULL", "null"}, {"NULL", "null"}, {"NULL", "null"}},
		}},
		{name: "usertypes",
			setup: []string{
				`CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s "complicated"')`,
				`CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)`,
				`CREATE DOMAIN price AS numeric(12,2)`,
				`CREATE DOMAIN label AS text`,
				`CREATE TYPE pair AS (a int4, b text)`,
				`CREATE TYPE nest AS (p pair, tags text[], n numeric, d jsonb, m mood)`,
				`CREATE DOMAIN intlist AS int4[]`,
				// A base type the agent cannot know: int4's I/O under
				// another name (as in PostgreSQL's own regression tests).
				`CREATE TYPE int42`,
				`CREATE FUNCTION int42_in(cstring) RETURNS int42 AS 'int4in' LANGUAGE internal IMMUTABLE STRICT`,
				`CREATE FUNCTION int42_out(int42) RETURNS cstring AS 'int4out' LANGUAGE internal IMMUTABLE STRICT`,
				`CREATE TYPE int42 (internallength = 4, input = int42_in, output = int42_out, alignment = int4, passedbyvalue)`,
			},
			types: []string{"mood", "posint", "price", "label", "pair", "nest", "mood[]", "pair[]", "intlist", "int42"},
			rows: [][]cell{
				{{"'happy'", `"happy"`}, {"5", "5"}, {"9.9", `"9.90"`}, {"'lbl'", `"lbl"`},
					{"ROW(1, 'a b')", `{"a":1,"b":"a b"}`},
					{`ROW(ROW(2, 'x,"y"')::pair, ARRAY['t1', 't 2'], 1.50, '{"k": [1]}', 'sad')::nest`, `{"d":{"k":[1]},"m":"sad","n":"1.50","p":{"a":2,"b":"x,\"y\""},"tags":["t1","t 2"]}`},
					{"'{happy,sad}'", `["happy","sad"]`},
					{"ARRAY[ROW(1, 'a'), ROW(NULL, NULL)]::pair[]", `[{"a":1,"b":"a"},{"a":null,"b":null}]`},
					{"'{1,2}'", "[1,2]"}, {"'42'", `"42"`}},
				{{`'it''s "complicated"'`, `"it's \"complicated\""`}, {"2147483647", "2147483647"}, {"'-0.5'", `"-0.50"`}, {"''", `""`},
					{"ROW(NULL, '')", `{"a":null,"b":""}`},
					{"ROW(NULL, NULL, NULL, NULL, NULL)::nest", `{"d":null,"m":null,"n":null,"p":null,"tags":null}`},
					{"'{}'", "[]"}, {"'{}'", "[]"}, {"'{}'", "[]"}, {"'-7'", `"-7"`}},
				{{"'sad'", `"sad"`}, {"1", "1"}, {"0", `"0.00"`}, {`E'multi\nline'`, `"multi\nline"`},
					{`ROW(-1, E'q"\\,()')`, `{"a":-1,"b":"q\"\\,()"}`},
					{`ROW(ROW(3, 'he said "hi"')::pair, ARRAY['a,b', NULL], 'NaN', '[1, 2.5]', 'happy')::nest`, `{"d":[1,2.5],"m":"happy","n":"NaN","p":{"a":3,"b":"he said \"hi\""},"tags":["a,b",null]}`},
					{`ARRAY['it''s "complicated"']::mood[]`, `["it's \"complicated\""]`},
					{`ARRAY[ROW(2, '{"x"}')]::pair[]`, `[{"a":2,"b":"{\"x\"}"}]`},
					{"'{{1},{2}}'", "[[1],[2]]"}, {"'0'", `"0"`}},
			}},
	}
}

// TestFidelityTypes inserts, updates and deletes real, edge and NULL values
// of every type family and checks the exact JSON the spine stored for each
// column, in "new" and, for the UPDATE and DELETE, in "old".
func TestFidelityTypes(t *testing.T) {
	h := newHarness(t)
	fams := typeFamilies()
	for _, f := range fams {
		for _, s := range f.setup {
			h.exec(s)
		}
		var cols []string
		for i, typ := range f.types {
			cols = append(cols, fmt.Sprintf("c%d %s", i+1, typ))
		}
		h.exec(fmt.Sprintf("CREATE TABLE %s (id int PRIMARY KEY, %s)", f.table(), strings.Join(cols, ", ")))
		h.watch(f.table(), "other", "fidelity")
	}
	h.startAgent()
	total := 0
	for _, f := range fams {
		rows := append(f.rows, f.nullRow())
		for i, row := range rows {
			var lits []string
			for _, c := range row {
				lits = append(lits, c.lit)
			}
			h.exec(fmt.Sprintf("INSERT INTO %s (id, %s) VALUES (%d, %s)", f.table(), f.columns(), i+1, strings.Join(lits, ", ")))
		}
		total += len(rows)
		if len(f.rows) >= 2 {
			h.exec(fmt.Sprintf("UPDATE %[1]s SET (%[2]s) = (SELECT %[2]s FROM %[1]s WHERE id = 2) WHERE id = 1", f.table(), f.columns()))
			total++
		}
		h.exec(fmt.Sprintf("DELETE FROM %s WHERE id = %d", f.table(), len(rows)))
		total++
	}
	tables := byTable(t, h.expectExactly(total, 500*time.Millisecond))
	for _, f := range fams {
		t.Run(f.name, func(t *testing.T) {
			evs := tables["public."+f.table()]
			rows := append(f.rows, f.nullRow())
			want := strings.TrimSpace(strings.Repeat("INSERT ", len(rows)))
			if len(f.rows) >= 2 {
				want += " UPDATE"
			}
			want += " DELETE"
			if got := ops(t, evs); got != want {
				t.Fatalf("got operations %q, want %q", got, want)
			}
			for i, row := range rows {
				f.checkRow(t, evs[i], "new", i+1, row)
				expectRow(t, evs[i], "old", "")
			}
			k := len(rows)
			if len(f.rows) >= 2 {
				f.checkRow(t, evs[k], "old", 1, f.rows[0])
				f.checkRow(t, evs[k], "new", 1, f.rows[1])
				k++
			}
			f.checkRow(t, evs[k], "old", len(rows), f.nullRow())
			expectRow(t, evs[k], "new", "")
		})
	}
}

// TestFidelityTypeTable checks pgjson.TypeTable against a real server and
// the spine double: each example's text is what PostgreSQL sends for it, and
// its JSON is what the spine stores.
func TestFidelityTypeTable(t *testing.T) {
	h := newHarness(t)
	h.exec("CREATE EXTENSION citext")
	h.exec(`CREATE TYPE mood AS ENUM ('happy', 'sad')`)
	h.exec(`CREATE DOMAIN price AS numeric(12,2)`)
	h.exec(`CREATE TYPE pair AS (a int4, b text, c text)`)
	type example struct {
		col   string
		types string
		ex    pgjson.TypeExample
	}
	var exs []example
	var defs, lits, cols []string
	for _, row := range pgjson.TypeTable {
		for _, ex := range row.Examples {
			col := fmt.Sprintf("c%d", len(exs)+1)
			exs = append(exs, example{col, row.Types, ex})
			defs = append(defs, col+" "+ex.SQLType)
			lits = append(lits, "'"+strings.ReplaceAll(ex.Text, "'", "''")+"'")
			cols = append(cols, col)
		}
	}
	h.exec("CREATE TABLE type_table (id int PRIMARY KEY, " + strings.Join(defs, ", ") + ")")
	h.watch("type_table", "other", "type-table")
	h.startAgent()
	h.exec("INSERT INTO type_table (id, " + strings.Join(cols, ", ") + ") VALUES (1, " + strings.Join(lits, ", ") + ")")
	h.exec("INSERT INTO type_table (id) VALUES (2)")
	evs := h.expectExactly(2, 300*time.Millisecond)

	// The text forms, read under the agent's session settings.
	texts := make([]string, len(exs))
	conn := h.conn
	ctx := context.Background()
	for k, v := range map[string]string{"DateStyle": "ISO, MDY", "IntervalStyle": "iso_8601", "TimeZone": "UTC", "extra_float_digits": "1", "bytea_output": "hex"} {
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", k, v); err != nil {
			t.Fatal(err)
		}
	}
	var casts []string
	for _, c := range cols {
		// format's %s applies the type's output function, as the
		// walsender does (c::text would print a bool as "true").
		casts = append(casts, "format('%s', "+c+")")
	}
	scan := make([]any, len(texts))
	for i := range texts {
		scan[i] = &texts[i]
	}
	if err := conn.QueryRow(ctx, "SELECT "+strings.Join(casts, ", ")+" FROM type_table WHERE id = 1").Scan(scan...); err != nil {
		t.Fatal(err)
	}
	for i, e := range exs {
		t.Run(e.types+"/"+e.ex.SQLType+"/"+e.ex.Text, func(t *testing.T) {
			if texts[i] != e.ex.Text {
				t.Errorf("text form: got %q, want %q", texts[i], e.ex.Text)
			}
			if got := stored(t, field(t, evs[0], "new", e.col)); got != e.ex.JSON {
				t.Errorf("stored: got %s, want %s", got, e.ex.JSON)
			}
			if got := stored(t, field(t, evs[1], "new", e.col)); got != "null" {
				t.Errorf("NULL stored: got %s, want null", got)
			}
		})
	}
}

// TestFidelityUnchangedToast updates only the small column of a row whose
// large column is TOASTed: both old and new carry the whole large value. It
// also checks the key-identity fallback, which needs a column list
// (PostgreSQL 15+); TestFidelityUnchangedToastFullIdentity is the part that
// runs on every version.
func TestFidelityUnchangedToast(t *testing.T) { unchangedToast(t, true) }

// TestFidelityUnchangedToastFullIdentity is TestFidelityUnchangedToast
// without the column-list table, for PostgreSQL 14 (the version matrix runs
// it there; on 15+ TestFidelityUnchangedToast covers it).
func TestFidelityUnchangedToastFullIdentity(t *testing.T) { unchangedToast(t, false) }

func unchangedToast(t *testing.T, keyIdentity bool) {
	h := newHarness(t)
	ctx := context.Background()
	h.exec(`CREATE TABLE toasty (id int PRIMARY KEY, small text, body text)`)
	h.watch("toasty", "other", "toast")
	tbls := []string{"toasty"}
	if keyIdentity {
		h.exec(`CREATE TABLE toasty_default (id int PRIMARY KEY, small text, body text)`)
		// The documented fallback: without REPLICA IDENTITY FULL an unchanged
		// TOASTed value is not in the WAL and must be named, not invented. A
		// column list keeps the primary key as identity on purpose (the agent
		// restores FULL on any other watched table).
		if _, err := newRegistry(h).Watch(ctx, mustName(t, "toasty_default"), "other", "toast",
			watches.Options{Columns: []string{"id", "small", "body"}}); err != nil {
			t.Fatal(err)
		}
		tbls = append(tbls, "toasty_default")
	}
	h.startAgent()
	// 1.5 MiB of an md5 chain: random enough not to compress.
	const size = 1536 << 10
	for _, tbl := range tbls {
		h.exec(`INSERT INTO `+tbl+` SELECT 1, 'a', string_agg(md5(g::text || random()::text), '') FROM generate_series(1, $1 / 32) g`, size)
	}
	var body string
	if err := h.conn.QueryRow(ctx, `SELECT body FROM toasty WHERE id = 1`).Scan(&body); err != nil {
		t.Fatal(err)
	}
	var onDisk, toastRows int64
	if err := h.conn.QueryRow(ctx, `SELECT pg_column_size(body) FROM toasty WHERE id = 1`).Scan(&onDisk); err != nil {
		t.Fatal(err)
	}
	var toast string
	if err := h.conn.QueryRow(ctx, `SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'toasty'::regclass`).Scan(&toast); err != nil {
		t.Fatal(err)
	}
	if err := h.conn.QueryRow(ctx, `SELECT count(*) FROM `+toast).Scan(&toastRows); err != nil {
		t.Fatal(err)
	}
	if len(body) != size || toastRows == 0 {
		t.Fatalf("fixture: got %d bytes in %d TOAST chunks, want %d bytes stored out of line", len(body), toastRows, size)
	}
	t.Logf("fixture: %d bytes stored as %d in %d TOAST chunks", len(body), onDisk, toastRows)
	var bodyDefault string
	if keyIdentity {
		if err := h.conn.QueryRow(ctx, `SELECT body FROM toasty_default WHERE id = 1`).Scan(&bodyDefault); err != nil {
			t.Fatal(err)
		}
	}
	h.exec(`UPDATE toasty SET small = 'b' WHERE id = 1`)
	if keyIdentity {
		h.exec(`UPDATE toasty_default SET small = 'b' WHERE id = 1`)
	}
	h.exec(`DELETE FROM toasty WHERE id = 1`)
	tables := byTable(t, h.expectExactly(3+2*len(tbls[1:]), 300*time.Millisecond))

	t.Run("full", func(t *testing.T) {
		evs := tables["public.toasty"]
		if got := ops(t, evs); got != "INSERT UPDATE DELETE" {
			t.Fatalf("got operations %q, want INSERT UPDATE DELETE", got)
		}
		for _, c := range []struct {
			e     spinetest.Event
			key   string
			small string
		}{{evs[0], "new", "a"}, {evs[1], "old", "a"}, {evs[1], "new", "b"}, {evs[2], "old", "b"}} {
			got, _ := field(t, c.e, c.key, "body").(string)
			if got != body {
				t.Errorf("%v %s.body: got %d bytes (equal: %v), want the %d bytes SELECT returns", field(t, c.e, "operation"), c.key, len(got), got == body, len(body))
			}
			if s := field(t, c.e, c.key, "small"); s != c.small {
				t.Errorf("%v %s.small: got %v, want %q", field(t, c.e, "operation"), c.key, s, c.small)
			}
		}
		for _, e := range evs {
			if u, ok := metadata(t, e)["unavailable_columns"]; ok {
				t.Errorf("%v: got unavailable_columns %v, want none", field(t, e, "operation"), u)
			}
			if k, ok := metadata(t, e)["old_is_key_only"]; ok {
				t.Errorf("%v: got old_is_key_only %v, want none", field(t, e, "operation"), k)
			}
		}
	})
	if !keyIdentity {
		return
	}
	t.Run("replica identity default", func(t *testing.T) {
		evs := tables["public.toasty_default"]
		if got := ops(t, evs); got != "INSERT UPDATE" {
			t.Fatalf("got operations %q, want INSERT UPDATE", got)
		}
		if got, _ := field(t, evs[0], "new", "body").(string); got != bodyDefault {
			t.Errorf("INSERT new.body: got %d bytes, want the %d bytes SELECT returns", len(got), len(bodyDefault))
		}
		expectRow(t, evs[1], "old", "")
		expectRow(t, evs[1], "new", `{"id":1,"small":"b"}`)
		if got := stored(t, metadata(t, evs[1])["unavailable_columns"]); got != `["body"]` {
			t.Errorf("UPDATE unavailable_columns: got %s, want [\"body\"]", got)
		}
	})
}

// TestFidelitySchemaChanges alters a watched table between inserts, also
// inside a transaction: every event has the shape of its own moment.
func TestFidelitySchemaChanges(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE evolving (id int PRIMARY KEY, a int, b text)`)
	h.watch("evolving", "other", "ddl")
	h.startAgent()
	// A change of a column's type rewrites the stored values: a REWRITE
	// event (the table_rewrite event trigger), in the DDL's place.
	steps := []struct {
		sql     string
		want    string // new of the event, "" when the statement makes none
		old     string
		rewrite bool
	}{
		{sql: `INSERT INTO evolving VALUES (1, 1, 'x')`, want: `{"a":1,"b":"x","id":1}`},
		{sql: `ALTER TABLE evolving ADD COLUMN c numeric(4,2) DEFAULT 1.5`},
		{sql: `INSERT INTO evolving VALUES (2, 2, 'y', 2.25)`, want: `{"a":2,"b":"y","c":"2.25","id":2}`},
		// Row 1 predates the column: the default is filled in.
		{sql: `UPDATE evolving SET a = 10 WHERE id = 1`, old: `{"a":1,"b":"x","c":"1.50","id":1}`, want: `{"a":10,"b":"x","c":"1.50","id":1}`},
		{sql: `ALTER TABLE evolving DROP COLUMN b`},
		{sql: `INSERT INTO evolving VALUES (3, 3, 3.5)`, want: `{"a":3,"c":"3.50","id":3}`},
		{sql: `ALTER TABLE evolving RENAME COLUMN a TO a2`},
		{sql: `INSERT INTO evolving VALUES (4, 4, 4.5)`, want: `{"a2":4,"c":"4.50","id":4}`},
		{sql: `ALTER TABLE evolving ALTER COLUMN a2 TYPE bigint`, rewrite: true},
		{sql: `INSERT INTO evolving VALUES (5, 9223372036854775807, 5.5)`, want: `{"a2":9223372036854775807,"c":"5.50","id":5}`},
		{sql: `ALTER TABLE evolving ADD COLUMN t text`},
		{sql: `INSERT INTO evolving VALUES (6, 6, 6.5, '66')`, want: `{"a2":6,"c":"6.50","id":6,"t":"66"}`},
		{sql: `ALTER TABLE evolving ALTER COLUMN t TYPE int USING t::int`, rewrite: true},
		{sql: `INSERT INTO evolving VALUES (7, 7, 7.5, 77)`, want: `{"a2":7,"c":"7.50","id":7,"t":77}`},
		{sql: `UPDATE evolving SET a2 = 60 WHERE id = 6`, old: `{"a2":6,"c":"6.50","id":6,"t":66}`, want: `{"a2":60,"c":"6.50","id":6,"t":66}`},
		{sql: `ALTER TABLE evolving ALTER COLUMN c TYPE text`, rewrite: true},
		{sql: `DELETE FROM evolving WHERE id = 7`, old: `{"a2":7,"c":"7.50","id":7,"t":77}`},
	}
	var wants [][3]string // old, new, operation
	for _, s := range steps {
		h.exec(s.sql)
		switch {
		case s.rewrite:
			wants = append(wants, [3]string{"", "", envelope.OpRewrite})
		case s.want != "" || s.old != "":
			wants = append(wants, [3]string{s.old, s.want})
		}
	}
	// Within one transaction: the old shape, a change, the new shape.
	tx, err := h.conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO evolving VALUES (8, 8, '8.5', 88)`,
		`ALTER TABLE evolving ADD COLUMN late jsonb DEFAULT '{"d": 1}'`,
		`INSERT INTO evolving VALUES (9, 9, '9.5', 99, '[9]')`,
		`ALTER TABLE evolving DROP COLUMN t`,
		`INSERT INTO evolving VALUES (10, 10, '10.5', '{"ten": 10}')`,
	} {
		if _, err := tx.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	wants = append(wants,
		[3]string{"", `{"a2":8,"c":"8.5","id":8,"t":88}`},
		[3]string{"", `{"a2":9,"c":"9.5","id":9,"late":[9],"t":99}`},
		[3]string{"", `{"a2":10,"c":"10.5","id":10,"late":{"ten":10}}`},
	)
	h.exec(`INSERT INTO evolving (id) VALUES (11)`)
	// c's default 1.5 was converted with the column to text.
	wants = append(wants, [3]string{"", `{"a2":null,"c":"1.5","id":11,"late":{"d":1}}`})
	evs := h.expectExactly(len(wants), 500*time.Millisecond)
	for i, w := range wants {
		expectRow(t, evs[i], "old", w[0])
		expectRow(t, evs[i], "new", w[1])
		if op := field(t, evs[i], "operation"); w[2] != "" && op != w[2] {
			t.Errorf("event %d is %v, want %s", evs[i].EventID, op, w[2])
		}
	}
}

// TestFidelityTruncate checks TRUNCATE events: one per watched table, with
// the cascade and restart_identity flags, none for unwatched tables.
func TestFidelityTruncate(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE ta (id serial PRIMARY KEY)`)
	h.exec(`CREATE TABLE tb (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE tc (id serial PRIMARY KEY)`)
	h.exec(`CREATE TABLE td (id int PRIMARY KEY, c int REFERENCES tc)`)
	h.exec(`CREATE TABLE te (id int PRIMARY KEY, c int REFERENCES tc)`)
	for _, tbl := range []string{"ta", "tc", "td"} {
		h.watch(tbl, "other", "truncate")
	}
	h.startAgent()
	h.exec(`TRUNCATE ta`)
	h.exec(`TRUNCATE ta, tb`)
	h.exec(`TRUNCATE tc RESTART IDENTITY CASCADE`)
	h.exec(`TRUNCATE ta RESTART IDENTITY`)
	h.exec(`TRUNCATE tb, te`)
	evs := h.expectExactly(5, 500*time.Millisecond)
	want := []struct {
		tables            string
		cascade, restartI bool
	}{
		{"public.ta", false, false},
		{"public.ta", false, false},
		{"public.tc public.td", true, true}, // two events, in either order
		{"public.ta", false, true},
	}
	i := 0
	for _, w := range want {
		var got []string
		for range strings.Fields(w.tables) {
			e := evs[i]
			i++
			got = append(got, fmt.Sprint(field(t, e, "table")))
			if op := field(t, e, "operation"); op != "TRUNCATE" {
				t.Errorf("event %d: got operation %v, want TRUNCATE", e.EventID, op)
			}
			if c := field(t, e, "cascade"); c != w.cascade {
				t.Errorf("event %d (%s): got cascade %v, want %v", e.EventID, w.tables, c, w.cascade)
			}
			if r := field(t, e, "restart_identity"); r != w.restartI {
				t.Errorf("event %d (%s): got restart_identity %v, want %v", e.EventID, w.tables, r, w.restartI)
			}
			expectRow(t, e, "old", "")
			expectRow(t, e, "new", "")
			if _, ok := metadata(t, e)["idempotency_key"]; !ok {
				t.Errorf("event %d: got no idempotency key", e.EventID)
			}
		}
		sort.Strings(got)
		if strings.Join(got, " ") != w.tables {
			t.Errorf("got tables %v, want %s", got, w.tables)
		}
	}
}

// TestFidelityPartitions watches a partitioned table: changes to its
// partitions, existing or created later, are reported under its name.
func TestFidelityPartitions(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE meas (id int, at date, v text) PARTITION BY RANGE (at)`)
	h.exec(`CREATE TABLE meas_2025 PARTITION OF meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`)
	h.exec(`CREATE TABLE meas_2026 PARTITION OF meas FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`)
	h.watch("meas", "other", "partitions")
	h.startAgent()
	type step struct{ op, old, new string }
	var want []step
	do := func(sql string, steps ...step) {
		t.Helper()
		h.exec(sql)
		want = append(want, steps...)
	}
	do(`INSERT INTO meas VALUES (1, '2025-05-01', 'a')`, step{"INSERT", "", `{"at":"2025-05-01","id":1,"v":"a"}`})
	do(`INSERT INTO meas_2026 VALUES (2, '2026-05-01', 'b')`, step{"INSERT", "", `{"at":"2026-05-01","id":2,"v":"b"}`})
	do(`UPDATE meas SET v = 'c' WHERE id = 1`, step{"UPDATE", `{"at":"2025-05-01","id":1,"v":"a"}`, `{"at":"2025-05-01","id":1,"v":"c"}`})
	// A row that moves to another partition is deleted from one and
	// inserted into the other: PostgreSQL logs (and pgoutput sends) it so.
	do(`UPDATE meas SET at = '2026-02-02' WHERE id = 1`,
		step{"DELETE", `{"at":"2025-05-01","id":1,"v":"c"}`, ""},
		step{"INSERT", "", `{"at":"2026-02-02","id":1,"v":"c"}`})
	do(`DELETE FROM meas_2026 WHERE id = 2`, step{"DELETE", `{"at":"2026-05-01","id":2,"v":"b"}`, ""})

	// Partitions created and attached while the agent runs.
	h.exec(`CREATE TABLE meas_2027 PARTITION OF meas FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')`)
	h.exec(`CREATE TABLE meas_2028 (LIKE meas)`)
	h.exec(`ALTER TABLE meas ATTACH PARTITION meas_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')`)
	do(`INSERT INTO meas VALUES (3, '2027-03-03', 'd'), (4, '2028-04-04', 'e')`,
		step{"INSERT", "", `{"at":"2027-03-03","id":3,"v":"d"}`},
		step{"INSERT", "", `{"at":"2028-04-04","id":4,"v":"e"}`})
	// Their REPLICA IDENTITY FULL comes from the agent's housekeeping
	// (every 15 s); UPDATE and DELETE need it (see
	// TestFidelityNewPartitionBeforeHousekeeping for the window before).
	deadline := time.Now().Add(40 * time.Second)
	for {
		var missing int
		if err := h.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_class
			WHERE relname IN ('meas_2027', 'meas_2028') AND relreplident <> 'f'`).Scan(&missing); err != nil {
			t.Fatal(err)
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new partitions still lack REPLICA IDENTITY FULL after 40s of housekeeping")
		}
		time.Sleep(200 * time.Millisecond)
	}
	do(`UPDATE meas SET v = 'f' WHERE id = 3`,
		step{"UPDATE", `{"at":"2027-03-03","id":3,"v":"d"}`, `{"at":"2027-03-03","id":3,"v":"f"}`})
	do(`UPDATE meas_2028 SET v = 'f' WHERE id = 4`,
		step{"UPDATE", `{"at":"2028-04-04","id":4,"v":"e"}`, `{"at":"2028-04-04","id":4,"v":"f"}`})
	do(`UPDATE meas SET at = '2027-12-31' WHERE id = 4`,
		step{"DELETE", `{"at":"2028-04-04","id":4,"v":"f"}`, ""},
		step{"INSERT", "", `{"at":"2027-12-31","id":4,"v":"f"}`})
	do(`DELETE FROM meas WHERE id = 3`, step{"DELETE", `{"at":"2027-03-03","id":3,"v":"f"}`, ""})
	do(`DELETE FROM meas_2027 WHERE id = 4`, step{"DELETE", `{"at":"2027-12-31","id":4,"v":"f"}`, ""})
	evs := h.expectExactly(len(want), 500*time.Millisecond)
	for i, w := range want {
		e := evs[i]
		if got := field(t, e, "table"); got != "public.meas" {
			t.Errorf("event %d: got table %v, want public.meas", i, got)
		}
		if got := field(t, e, "operation"); got != w.op {
			t.Errorf("event %d: got operation %v, want %s", i, got, w.op)
		}
		expectRow(t, e, "old", w.old)
		expectRow(t, e, "new", w.new)
		if k, ok := metadata(t, e)["old_is_key_only"]; ok {
			t.Errorf("event %d: got old_is_key_only %v, want a full old row", i, k)
		}
	}
}

// TestFidelityNewPartitionBeforeHousekeeping is the behaviour a watch of a
// partitioned table should have: a partition created after the watch is
// usable at once, and its old rows are whole. It fails today (see the skip
// message). The event trigger installed by watch (as a superuser, as here)
// sets REPLICA IDENTITY FULL in the creating transaction.
func TestFidelityNewPartitionBeforeHousekeeping(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE nopk (id int, at date, v text) PARTITION BY RANGE (at)`)
	h.exec(`CREATE TABLE haspk (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`)
	h.watch("nopk", "other", "partitions")
	h.watch("haspk", "other", "partitions")
	h.startAgent()
	h.exec(`CREATE TABLE nopk_1 PARTITION OF nopk FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`)
	h.exec(`CREATE TABLE haspk_1 PARTITION OF haspk FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`)
	failed := 0
	for _, tbl := range []string{"haspk", "nopk"} {
		for _, sql := range []string{
			`INSERT INTO ` + tbl + ` VALUES (1, '2025-05-01', 'a')`,
			`UPDATE ` + tbl + ` SET v = 'b' WHERE id = 1`,
			`DELETE FROM ` + tbl + ` WHERE id = 1`,
		} {
			if _, err := h.conn.Exec(context.Background(), sql); err != nil {
				t.Errorf("the application's %q failed: %v", sql, err)
				failed++
			}
		}
	}
	tables := byTable(t, h.expectExactly(6-failed, 300*time.Millisecond))
	for _, tbl := range []string{"public.haspk", "public.nopk"} {
		evs := tables[tbl]
		if got := ops(t, evs); got != "INSERT UPDATE DELETE" {
			t.Errorf("%s: got operations %q, want INSERT UPDATE DELETE", tbl, got)
			continue
		}
		expectRow(t, evs[1], "old", `{"at":"2025-05-01","id":1,"v":"a"}`)
		expectRow(t, evs[2], "old", `{"at":"2025-05-01","id":1,"v":"b"}`)
	}
}

// TestFidelityTableShapes covers tables without a primary key, generated
// columns and columns dropped before the watch.
func TestFidelityTableShapes(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE nokey (a int, b text)`)
	h.exec(`CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, price numeric, qty int,
		total numeric GENERATED ALWAYS AS (price * qty) STORED, v text)`)
	h.exec(`CREATE TABLE dropped (id int PRIMARY KEY, gone text, kept text, gone2 int, tail int)`)
	h.exec(`INSERT INTO dropped VALUES (1, 'secret', 'k1', 42, 1)`)
	h.exec(`ALTER TABLE dropped DROP COLUMN gone, DROP COLUMN gone2`)
	for _, tbl := range []string{"nokey", "gen", "dropped"} {
		h.watch(tbl, "other", "shapes")
	}
	h.startAgent()
	h.exec(`INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, NULL)`)
	h.exec(`UPDATE nokey SET b = 'y' WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)`)
	h.exec(`DELETE FROM nokey WHERE b = 'x'`)
	h.exec(`DELETE FROM nokey WHERE b IS NULL`)
	h.exec(`INSERT INTO gen (price, qty, v) VALUES (2.50, 4, 'g')`)
	h.exec(`UPDATE gen SET qty = 5 WHERE id = 1`)
	h.exec(`DELETE FROM gen WHERE id = 1`)
	h.exec(`INSERT INTO dropped VALUES (2, 'k2', 2)`)
	h.exec(`UPDATE dropped SET tail = 10 WHERE id = 1`)
	h.exec(`DELETE FROM dropped WHERE id = 2`)
	tables := byTable(t, h.expectExactly(12, 500*time.Millisecond))

	t.Run("no primary key", func(t *testing.T) {
		evs := tables["public.nokey"]
		want := []struct{ op, old, new string }{
			{"INSERT", "", `{"a":1,"b":"x"}`},
			{"INSERT", "", `{"a":1,"b":"x"}`},
			{"INSERT", "", `{"a":2,"b":null}`},
			{"UPDATE", `{"a":1,"b":"x"}`, `{"a":1,"b":"y"}`},
			{"DELETE", `{"a":1,"b":"x"}`, ""},
			{"DELETE", `{"a":2,"b":null}`, ""},
		}
		if len(evs) != len(want) {
			t.Fatalf("got %d events (%s), want %d", len(evs), ops(t, evs), len(want))
		}
		for i, w := range want {
			if got := field(t, evs[i], "operation"); got != w.op {
				t.Errorf("event %d: got %v, want %s", i, got, w.op)
			}
			expectRow(t, evs[i], "old", w.old)
			expectRow(t, evs[i], "new", w.new)
			if k, ok := metadata(t, evs[i])["old_is_key_only"]; ok {
				t.Errorf("event %d: got old_is_key_only %v, want the full old row", i, k)
			}
		}
	})
	// Up to PostgreSQL 17, pgoutput does not send generated columns: they
	// are absent (never null, never a stale value), the other columns
	// intact. From 18 on the publication publishes stored generated columns
	// (publish_generated_columns = stored) and their values are in the
	// events, in old rows too.
	t.Run("generated columns", func(t *testing.T) {
		evs := tables["public.gen"]
		if got := ops(t, evs); got != "INSERT UPDATE DELETE" {
			t.Fatalf("got operations %q, want INSERT UPDATE DELETE", got)
		}
		total4, total5 := "", ""
		if pgtest.ServerVersionNum(t) >= 180000 {
			total4, total5 = `,"total":"10.00"`, `,"total":"12.50"`
		}
		expectRow(t, evs[0], "new", `{"id":1,"price":"2.50","qty":4`+total4+`,"v":"g"}`)
		expectRow(t, evs[1], "old", `{"id":1,"price":"2.50","qty":4`+total4+`,"v":"g"}`)
		expectRow(t, evs[1], "new", `{"id":1,"price":"2.50","qty":5`+total5+`,"v":"g"}`)
		expectRow(t, evs[2], "old", `{"id":1,"price":"2.50","qty":5`+total5+`,"v":"g"}`)
	})
	t.Run("dropped columns", func(t *testing.T) {
		evs := tables["public.dropped"]
		if got := ops(t, evs); got != "INSERT UPDATE DELETE" {
			t.Fatalf("got operations %q, want INSERT UPDATE DELETE", got)
		}
		expectRow(t, evs[0], "new", `{"id":2,"kept":"k2","tail":2}`)
		// Row 1 still holds the dropped values on disk.
		expectRow(t, evs[1], "old", `{"id":1,"kept":"k1","tail":1}`)
		expectRow(t, evs[1], "new", `{"id":1,"kept":"k1","tail":10}`)
		expectRow(t, evs[2], "old", `{"id":2,"kept":"k2","tail":2}`)
	})
}

// TestFidelityUnwatchedInSameTransaction mixes watched, unwatched, published
// but unregistered, and unwatched-again tables in one transaction: only the
// watched table's changes are reported.
func TestFidelityUnwatchedInSameTransaction(t *testing.T) {
	h := newHarness(t)
	for _, tbl := range []string{"w", "u", "byhand", "was"} {
		h.exec(`CREATE TABLE ` + tbl + ` (id int PRIMARY KEY, v text)`)
	}
	h.watch("w", "other", "mixed")
	h.watch("was", "other", "mixed")
	h.unwatch("was")
	h.exec(`ALTER PUBLICATION ` + testPub + ` ADD TABLE byhand`)
	h.startAgent()
	tx, err := h.conn.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO u VALUES (1, 'u')`,
		`INSERT INTO w VALUES (1, 'a')`,
		`INSERT INTO byhand VALUES (1, 'h')`,
		`INSERT INTO was VALUES (1, 'x')`,
		`UPDATE u SET v = 'u2'`,
		`UPDATE w SET v = 'b'`,
		`UPDATE byhand SET v = 'h2'`,
		`DELETE FROM was`,
		`DELETE FROM u`,
	} {
		if _, err := tx.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.exec(`TRUNCATE u, byhand, was, w`)
	evs := h.expectExactly(3, 500*time.Millisecond)
	for i, w := range []struct{ op, old, new string }{
		{"INSERT", "", `{"id":1,"v":"a"}`},
		{"UPDATE", `{"id":1,"v":"a"}`, `{"id":1,"v":"b"}`},
		{"TRUNCATE", "", ""},
	} {
		if got := field(t, evs[i], "table"); got != "public.w" {
			t.Errorf("event %d: got table %v, want public.w", i, got)
		}
		if got := field(t, evs[i], "operation"); got != w.op {
			t.Errorf("event %d: got %v, want %s", i, got, w.op)
		}
		expectRow(t, evs[i], "old", w.old)
		expectRow(t, evs[i], "new", w.new)
	}
}
