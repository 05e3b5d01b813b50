package catalog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/catalog"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// schemaSQL creates the user-defined types the tests resolve.
const schemaSQL = `
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN amount AS numeric(12,2);
CREATE DOMAIN amount2 AS amount;
CREATE DOMAIN intlist AS int4[];
CREATE DOMAIN mybox AS box;
CREATE TYPE pair AS (f1 int4, f2 text, f3 text);
CREATE TYPE outer_t AS (id int4, tags text[], inner_p pair, pairs pair[], doc jsonb);
CREATE TYPE trio AS (a int4, b int4, c text);
ALTER TYPE trio DROP ATTRIBUTE b;
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TYPE one AS (x int4);
CREATE TYPE two AS (b one, c text);
CREATE TYPE three AS (a two);
CREATE TYPE empty_t AS ();
`

// sessionSQL sets the GUCs the replication session uses, so text forms are
// the ones the stream carries.
const sessionSQL = `SET DateStyle = 'ISO, MDY'; SET IntervalStyle = iso_8601; SET TimeZone = 'UTC';
SET extra_float_digits = 1; SET bytea_output = hex; SET lc_monetary = 'C'`

func connect(t *testing.T) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := pgtest.Connect(t, pgtest.DSN(t))
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	if _, err := conn.Exec(ctx, sessionSQL); err != nil {
		t.Fatalf("set GUCs: %v", err)
	}
	return conn
}

func typeOID(t *testing.T, conn *pgx.Conn, name string) uint32 {
	t.Helper()
	var oid uint32
	if err := conn.QueryRow(context.Background(), "SELECT $1::regtype::oid", name).Scan(&oid); err != nil {
		t.Fatalf("type %s: %v", name, err)
	}
	return oid
}

var kindNames = map[pgjson.TypeKind]string{
	pgjson.KindText: "text", pgjson.KindInteger: "integer", pgjson.KindFloat: "float",
	pgjson.KindNumeric: "numeric", pgjson.KindBool: "bool", pgjson.KindJSON: "json",
	pgjson.KindTimestamp: "timestamp", pgjson.KindTimestampTZ: "timestamptz", pgjson.KindDate: "date",
	pgjson.KindTime: "time", pgjson.KindTimeTZ: "timetz", pgjson.KindBytea: "bytea",
	pgjson.KindArray: "array", pgjson.KindComposite: "composite",
}

// describe renders a Type as "name kind", with "[elem]" for arrays (and
// the delimiter if not ',') and "{field:type,...}" for composites.
func describe(t *pgjson.Type) string {
	if t == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString(t.Name + " " + kindNames[t.Kind])
	switch t.Kind {
	case pgjson.KindArray:
		if t.Delim != ',' && t.Delim != 0 {
			b.WriteByte(t.Delim)
		}
		b.WriteString("[" + describe(t.Elem) + "]")
	case pgjson.KindComposite:
		b.WriteString("{")
		for i, f := range t.Fields {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(f.Name + ":" + describe(f.Type))
		}
		b.WriteString("}")
	}
	return b.String()
}

// countingQuerier counts the queries the resolver sends.
type countingQuerier struct {
	q catalog.Querier
	n int
}

func (c *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n++
	return c.q.Query(ctx, sql, args...)
}

func TestResolve(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	r := catalog.NewResolver(conn)
	const pair = "public.pair composite{f1:int4 integer,f2:text text,f3:text text}"
	tests := []struct {
		name string // regtype input
		want string
	}{
		{"posint", "public.posint integer"},
		{"amount2", "public.amount2 numeric"},
		{"amount", "public.amount numeric"},
		{"mood", "public.mood text"},
		{"mood[]", "public._mood array[public.mood text]"},
		{"pair", pair},
		{"pair[]", "public._pair array[" + pair + "]"},
		{"outer_t", "public.outer_t composite{id:int4 integer,tags:_text array[text text],inner_p:" + pair +
			",pairs:public._pair array[" + pair + "],doc:jsonb json}"},
		{"posint[]", "public._posint array[public.posint integer]"},
		{"amount2[]", "public._amount2 array[public.amount2 numeric]"},
		{"intlist", "public.intlist array[int4 integer]"},
		{"intlist[]", "public._intlist array[public.intlist array[int4 integer]]"},
		{"mybox", "public.mybox text"},
		{"mybox[]", "public._mybox array;[public.mybox text]"},
		{"citext", "public.citext text"},
		{"citext[]", "public._citext array[public.citext text]"},
		{"floatrange", "public.floatrange text"},
		{"floatmultirange", "public.floatmultirange text"},
		{"floatrange[]", "public._floatrange array[public.floatrange text]"},
		{"trio", "public.trio composite{a:int4 integer,c:text text}"},
		{"three", "public.three composite{a:public.two composite{b:public.one composite{x:int4 integer},c:text text}}"},
		{"empty_t", "public.empty_t composite{}"},
		{"information_schema.cardinal_number", "information_schema.cardinal_number integer"},
		{"information_schema.sql_identifier", "information_schema.sql_identifier text"},
		{"cstring[]", "_cstring array[cstring text]"},
		{"record", "record text"},
		{"int4range", "int4range text"},
		{"int4[]", "_int4 array[int4 integer]"},
		{"box[]", "_box array;[box text]"},
		{"timestamptz", "timestamptz timestamptz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			oid := typeOID(t, conn, tc.name)
			got, err := r.Resolve(ctx, oid)
			if err != nil {
				t.Fatalf("got error %v, want %s", err, tc.want)
			}
			if s := describe(got); s != tc.want {
				t.Fatalf("got %s, want %s", s, tc.want)
			}
			if got.OID != oid {
				t.Fatalf("got OID %d, want %d", got.OID, oid)
			}
		})
	}
	t.Run("catalog_row_type", func(t *testing.T) {
		got, err := r.Resolve(ctx, typeOID(t, conn, "pg_class[]"))
		if err != nil {
			t.Fatal(err)
		}
		if got.Kind != pgjson.KindArray || got.Elem.Kind != pgjson.KindComposite || len(got.Elem.Fields) < 10 ||
			got.Elem.Fields[0].Name != "oid" || got.Elem.Fields[0].Type.Kind != pgjson.KindInteger {
			t.Fatalf("got %.200s, want an array of the pg_class composite", describe(got))
		}
	})
	t.Run("unknown_oid", func(t *testing.T) {
		got, err := r.Resolve(ctx, 4000000000)
		if err != nil {
			t.Fatalf("got error %v, want none", err)
		}
		if s := describe(got); s != "unknown(4000000000) text" {
			t.Fatalf("got %s, want unknown(4000000000) text", s)
		}
	})
}

func TestResolveCacheAndForget(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	cq := &countingQuerier{q: conn}
	r := catalog.NewResolver(cq)
	outer := typeOID(t, conn, "outer_t")
	first, err := r.Resolve(ctx, outer)
	if err != nil {
		t.Fatal(err)
	}
	if cq.n == 0 {
		t.Fatalf("got 0 queries, want some")
	}
	n := cq.n
	again, err := r.Resolve(ctx, outer)
	if err != nil {
		t.Fatal(err)
	}
	if again != first || cq.n != n {
		t.Fatalf("got %d more queries (same pointer: %v), want 0 (cached)", cq.n-n, again == first)
	}
	// pair was resolved as a field of outer_t: cached too.
	if _, err := r.Resolve(ctx, typeOID(t, conn, "pair")); err != nil || cq.n != n {
		t.Fatalf("got %d more queries (%v), want 0 (cached)", cq.n-n, err)
	}
	if _, err := r.Resolve(ctx, 23); err != nil || cq.n != n {
		t.Fatalf("got %d queries for a built-in (%v), want 0", cq.n-n, err)
	}

	if _, err := conn.Exec(ctx, "ALTER TYPE pair ADD ATTRIBUTE f4 bool"); err != nil {
		t.Fatal(err)
	}
	stale, _ := r.Resolve(ctx, typeOID(t, conn, "pair"))
	if len(stale.Fields) != 3 {
		t.Fatalf("got %d fields before Forget, want the cached 3", len(stale.Fields))
	}
	r.Forget()
	fresh, err := r.Resolve(ctx, typeOID(t, conn, "pair"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "public.pair composite{f1:int4 integer,f2:text text,f3:text text,f4:bool bool}"
	if s := describe(fresh); s != want {
		t.Fatalf("got %s, want %s", s, want)
	}
}

// failingQuerier fails every query.
type failingQuerier struct{}

var errBoom = errors.New("boom")

func (failingQuerier) Query(context.Context, string, ...any) (pgx.Rows, error) { return nil, errBoom }

func TestResolveErrors(t *testing.T) {
	r := catalog.NewResolver(failingQuerier{})
	if got, err := r.Resolve(context.Background(), 1007); err != nil || got.Kind != pgjson.KindArray {
		t.Fatalf("got %v, %v, want the built-in _int4 without a query", got, err)
	}
	if _, err := r.Resolve(context.Background(), 16400); !errors.Is(err, errBoom) {
		t.Fatalf("got error %v, want one wrapping %v", err, errBoom)
	}

	conn := connect(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r = catalog.NewResolver(conn)
	if _, err := r.Resolve(ctx, typeOID(t, conn, "pair")); err == nil {
		t.Fatalf("got no error, want one for a canceled context")
	}
}

// TestEndToEnd inserts edge values into a table with a column of each of
// many types, reads them back in text format (the type output functions,
// as pgoutput sends them) under the replication GUCs, and maps them with
// the resolved types.
func TestEndToEnd(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	huge := "123456789012345678901234567890.000000000000000000000000000001"
	cases := []struct {
		typ, expr, want string
	}{
		{"bool", "true", `true`},
		{"bool", "false", `false`},
		{"bytea", `'\x0102ff'`, `"\\x0102ff"`},
		{"bytea", `''`, `"\\x"`},
		{`"char"`, `'a'`, `"a"`},
		{"name", `'n'`, `"n"`},
		{"int2", "-32768", `-32768`},
		{"int4", "2147483647", `2147483647`},
		{"int8", "9223372036854775807", `9223372036854775807`},
		{"int8", "-9223372036854775808", `-9223372036854775808`},
		{"oid", "4294967295", `4294967295`},
		{"text", `E'multi\nline "q" \\ \t é 😀 \u2028 \x01'`, `"multi\nline \"q\" \\ \t \u00e9 \ud83d\ude00 \u2028 \u0001"`},
		{"varchar(10)", `'abc'`, `"abc"`},
		{"char(5)", `'ab'`, `"ab   "`},
		{"json", `'{"b": 1,  "a": [1, 2.50]}'`, `{"a":[1,2.5],"b":1}`},
		{"jsonb", `'{"b": 1, "a": [1, 2.50, {"c": null}], "s": "x\u2028y"}'`, `{"a":[1,2.5,{"c":null}],"b":1,"s":"x\u2028y"}`},
		{"jsonb", `'"just a string"'`, `"just a string"`},
		{"xml", `'<a>x &amp; y</a>'`, `"<a>x &amp; y</a>"`},
		{"point", `'(1,2)'`, `"(1,2)"`},
		{"box", `'((0,0),(1,1))'`, `"(1,1),(0,0)"`},
		{"float4", `'3.4028235e38'`, `3.4028235e+38`},
		{"float4", `'0.1'`, `0.1`},
		{"float8", `'1e308'`, `1e+308`},
		{"float8", `'-0'`, `-0.0`},
		{"float8", `'1.5e-7'`, `1.5e-07`},
		{"float8", `'NaN'`, `"NaN"`},
		{"float8", `'Infinity'`, `"Infinity"`},
		{"float8", `'-Infinity'`, `"-Infinity"`},
		{"float8", `'0.1'`, `0.1`},
		{"float8", `'123456789012345678'`, `1.2345678901234568e+17`},
		{"money", `'12.50'`, `"$12.50"`},
		{"inet", `'192.168.0.1/24'`, `"192.168.0.1/24"`},
		{"cidr", `'10.0.0.0/8'`, `"10.0.0.0/8"`},
		{"macaddr", `'08:00:2b:01:02:03'`, `"08:00:2b:01:02:03"`},
		{"date", `'2026-11-22'`, `"2026-11-22"`},
		{"date", `'0044-03-15 BC'`, `"-0043-03-15"`},
		{"date", `'infinity'`, `"infinity"`},
		{"time", `'10:00:00.5'`, `"10:00:00.5"`},
		{"timetz", `'10:00:00+02'`, `"10:00:00+02:00"`},
		{"timetz", `'10:00:00.25+05:30:15'`, `"10:00:00.25+05:30:15"`},
		{"timestamp", `'2026-11-22 10:00:00.123456'`, `"2026-11-22T10:00:00.123456"`},
		{"timestamp", `'0044-03-15 10:00:00 BC'`, `"-0043-03-15T10:00:00"`},
		{"timestamp", `'-infinity'`, `"-infinity"`},
		{"timestamptz", `'2026-11-22 10:00:00.5+00'`, `"2026-11-22T10:00:00.5+00:00"`},
		{"timestamptz", `'2026-11-22 12:00:00-08'`, `"2026-11-22T20:00:00+00:00"`},
		{"timestamptz", `'0001-01-01 00:00:00+00 BC'`, `"0000-01-01T00:00:00+00:00"`},
		{"timestamptz", `'infinity'`, `"infinity"`},
		{"interval", `'1 year 2 mons 3 days 04:05:06.5'`, `"P1Y2M3DT4H5M6.5S"`},
		{"bit(3)", `B'101'`, `"101"`},
		{"varbit", `B'1'`, `"1"`},
		{"numeric", `'12.50'`, `"12.50"`},
		{"numeric", `'NaN'`, `"NaN"`},
		{"numeric", `'-Infinity'`, `"-Infinity"`},
		{"numeric", "'" + huge + "'", `"` + huge + `"`},
		{"uuid", `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'`, `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		{"pg_lsn", `'16/B374D848'`, `"16/B374D848"`},
		{"tsvector", `'a fat cat'`, `"'a' 'cat' 'fat'"`},
		{"int4range", `'[1,10)'`, `"[1,10)"`},
		{"int4multirange", `'{[1,3), [5,7)}'`, `"{[1,3),[5,7)}"`},
		{"xid8", `'123'`, `"123"`},
		{"int4[]", `'{1,NULL,3}'`, `[1,null,3]`},
		{"int4[]", `'{}'`, `[]`},
		{"int4[]", `'{{1,2},{3,4}}'`, `[[1,2],[3,4]]`},
		{"int4[]", `'[0:1]={1,2}'`, `[1,2]`},
		{"text[]", `'{"NULL",NULL,"a,b","q\"x","back\\slash","{b}",""," sp ",é}'`, `["NULL",null,"a,b","q\"x","back\\slash","{b}",""," sp ","\u00e9"]`},
		{"box[]", `ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))']`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
		{"jsonb[]", `ARRAY['{"a": 1}'::jsonb, '[1]', NULL]`, `[{"a":1},[1],null]`},
		{"numeric[]", `'{1.50,NaN}'`, `["1.50","NaN"]`},
		{"float8[]", `'{-0,Infinity,2.5}'`, `[-0.0,"Infinity",2.5]`},
		{"timestamptz[]", `ARRAY['2026-11-22 10:00:00.5+00'::timestamptz, 'infinity']`, `["2026-11-22T10:00:00.5+00:00","infinity"]`},
		{"bytea[]", `ARRAY['\x01'::bytea, '\x']`, `["\\x01","\\x"]`},
		{"bool[]", `'{t,f}'`, `[true,false]`},
		{"date[]", `'{2026-11-22,0044-03-15 BC}'`, `["2026-11-22","-0043-03-15"]`},
		{"int4range[]", `'{"[1,3)",empty}'`, `["[1,3)","empty"]`},
		{"mood", `'happy'`, `"happy"`},
		{"mood[]", `'{happy,sad}'`, `["happy","sad"]`},
		{"posint", `5`, `5`},
		{"posint[]", `'{1,2}'`, `[1,2]`},
		{"amount2", `12.5`, `"12.50"`},
		{"intlist", `'{1,2}'`, `[1,2]`},
		{"intlist[]", `'{"{1,2}","{3}"}'`, `[[1,2],[3]]`},
		{"mybox[]", `ARRAY['((0,0),(1,1))'::mybox]`, `["(1,1),(0,0)"]`},
		{"citext", `'MiXed'`, `"MiXed"`},
		{"citext[]", `'{x,"y z"}'`, `["x","y z"]`},
		{"floatrange", `'[1.5,2)'`, `"[1.5,2)"`},
		{"pair", `ROW(1, 'a b', NULL)`, `{"f1":1,"f2":"a b","f3":null}`},
		{"pair", `ROW(2, '', 'say "hi" \ back')`, `{"f1":2,"f2":"","f3":"say \"hi\" \\ back"}`},
		{"pair", `ROW(NULL, NULL, NULL)`, `{"f1":null,"f2":null,"f3":null}`},
		{"pair", `ROW(3, '(x,y)', ' ')`, `{"f1":3,"f2":"(x,y)","f3":" "}`},
		{"pair[]", `ARRAY[ROW(1,'a',NULL)::pair, ROW(2,'b c','')::pair, NULL]`, `[{"f1":1,"f2":"a","f3":null},{"f1":2,"f2":"b c","f3":""},null]`},
		{"outer_t", `ROW(7, ARRAY['a','b c'], ROW(1,'x',NULL)::pair, ARRAY[ROW(2,'y','z')::pair, NULL], '{"k": [1, 2]}')`,
			`{"doc":{"k":[1,2]},"id":7,"inner_p":{"f1":1,"f2":"x","f3":null},"pairs":[{"f1":2,"f2":"y","f3":"z"},null],"tags":["a","b c"]}`},
		{"trio", `ROW(1, 'c')`, `{"a":1,"c":"c"}`},
		{"three", `ROW(ROW(ROW(1)::one, 'a "b"')::two)`, `{"a":{"b":{"x":1},"c":"a \"b\""}}`},
		{"empty_t", `ROW()`, `{}`},
	}
	var cols, vals []string
	for i, c := range cases {
		cols = append(cols, fmt.Sprintf("c%d %s", i, c.typ))
		vals = append(vals, c.expr)
	}
	// Test-only DDL/DML built from the constant table above.
	if _, err := conn.Exec(ctx, "CREATE TABLE e2e ("+strings.Join(cols, ", ")+")"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO e2e VALUES ("+strings.Join(vals, ", ")+")"); err != nil {
		t.Fatalf("insert: %v", err)
	}

	// The column type OIDs as pgoutput's Relation message sends them
	// (pg_attribute.atttypid: domains are not replaced by their base type).
	var typeOIDs []uint32
	rows, err := conn.Query(ctx, `SELECT atttypid FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var oid uint32
		if err := rows.Scan(&oid); err != nil {
			t.Fatal(err)
		}
		typeOIDs = append(typeOIDs, oid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(typeOIDs) != len(cases) {
		t.Fatalf("got %d columns, want %d", len(typeOIDs), len(cases))
	}

	// The simple protocol returns every column in text format: the output
	// of the type's output function, exactly what pgoutput sends (unlike
	// col::text, which strips the padding of char(n)).
	var texts [][]byte
	rows, err = conn.Query(ctx, "SELECT * FROM e2e", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		for _, v := range rows.RawValues() {
			texts = append(texts, append([]byte(nil), v...))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(texts) != len(cases) {
		t.Fatalf("got %d values, want %d", len(texts), len(cases))
	}

	r := catalog.NewResolver(conn)
	for i, c := range cases {
		t.Run(fmt.Sprintf("c%d_%s", i, c.typ), func(t *testing.T) {
			typ, err := r.Resolve(ctx, typeOIDs[i])
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgjson.AppendValue(nil, typ, texts[i])
			if err != nil {
				t.Fatalf("text %q: got error %v, want %s", texts[i], err, c.want)
			}
			if string(got) != c.want {
				t.Fatalf("text %q: got %s, want %s", texts[i], got, c.want)
			}
			if !json.Valid(got) {
				t.Fatalf("got invalid JSON %s", got)
			}
		})
	}
}
