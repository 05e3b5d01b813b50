package pgjson

import (
	"strings"
)

// TypeMappingRow is one row of TypeTable: how the values of a group of
// PostgreSQL types are written in an event's "old" and "new" objects.
type TypeMappingRow struct {
	// Types names the PostgreSQL types of the row, as users write them.
	Types string
	// JSON says what JSON value they become.
	JSON string
	// Examples show real values. Every example is checked by the pgjson
	// tests (through AppendValue) and by the agent's integration tests
	// (through a real server and the spine double), so the table cannot
	// drift from the code.
	Examples []TypeExample
}

// TypeExample is one value of a TypeMappingRow.
type TypeExample struct {
	// SQLType is the column type the example is stored in, as written in
	// SQL: "int8", "char(5)", "int4[]". The integration tests create the
	// user-defined ones (mood, price, pair, citext) themselves.
	SQLType string
	// OID is the built-in type (Builtin) that maps the example; 0 when
	// Type is set.
	OID uint32
	// Type is the mapping of a type that is not built in, as the catalog
	// resolver builds it; nil for built-in types.
	Type *Type
	// Text is the value's text form, as PostgreSQL sends it to the agent
	// (under the session settings the agent's replication connection sets:
	// DateStyle ISO, IntervalStyle iso_8601, TimeZone UTC,
	// extra_float_digits 1, bytea_output hex), and a valid SQL literal of
	// SQLType.
	Text string
	// JSON is what the agent writes for it, which is also what the spine
	// stores: it is already in the spine's canonical form (Python's
	// json.dumps, sort_keys, ASCII), so it survives the spine's
	// re-serialisation unchanged.
	JSON string
}

var (
	exampleInt4 = &Type{OID: 23, Name: "int4", Kind: KindInteger}
	exampleText = &Type{OID: 25, Name: "text", Kind: KindText}
)

// TypeTable describes, per PostgreSQL type, the JSON that a column value
// becomes, with examples. It documents AppendValue and the catalog
// resolver; the type table of docs/envelope.md ("Type mapping") is
// generated from it (see TypeTableMarkdown).
var TypeTable = []TypeMappingRow{
	{
		Types: "int2, int4, int8, oid",
		JSON:  "number, exact (the spine keeps integers of any size)",
		Examples: []TypeExample{
			{SQLType: "int8", OID: 20, Text: "-9223372036854775808", JSON: "-9223372036854775808"},
			{SQLType: "oid", OID: 26, Text: "4294967295", JSON: "4294967295"},
		},
	},
	{
		Types: "float4, float8",
		JSON:  `number, as PostgreSQL writes it in its shortest exact form (an integral value may have no fraction: 100); NaN, Infinity, -Infinity as strings; -0 as -0.0`,
		Examples: []TypeExample{
			{SQLType: "float8", OID: 701, Text: "1.5e-07", JSON: "1.5e-07"},
			{SQLType: "float4", OID: 700, Text: "0.1", JSON: "0.1"},
			{SQLType: "float8", OID: 701, Text: "-Infinity", JSON: `"-Infinity"`},
			{SQLType: "float8", OID: 701, Text: "-0", JSON: "-0.0"},
		},
	},
	{
		Types: "numeric, decimal",
		JSON:  "string, exact, as PostgreSQL writes it (scale kept, NaN, Infinity, -Infinity)",
		Examples: []TypeExample{
			{SQLType: "numeric(12,2)", OID: 1700, Text: "12.50", JSON: `"12.50"`},
			{SQLType: "numeric", OID: 1700, Text: "1234567890123456789012345678901234567890.5", JSON: `"1234567890123456789012345678901234567890.5"`},
			{SQLType: "numeric", OID: 1700, Text: "NaN", JSON: `"NaN"`},
		},
	},
	{
		Types: "money",
		JSON:  "string, formatted with lc_monetary = C (the replication session pins it, so the form does not depend on the server's locale)",
		Examples: []TypeExample{
			{SQLType: "money", OID: 790, Text: "-$1,234.56", JSON: `"-$1,234.56"`},
		},
	},
	{
		Types: "bool",
		JSON:  "true or false",
		Examples: []TypeExample{
			{SQLType: "bool", OID: 16, Text: "t", JSON: "true"},
		},
	},
	{
		Types: `text, varchar(n), char(n), name, "char", citext`,
		JSON:  "string; the padding of char(n) is kept",
		Examples: []TypeExample{
			{SQLType: "char(5)", OID: 1042, Text: "ab   ", JSON: `"ab   "`},
			{SQLType: "citext", Type: &Type{Name: "public.citext", Kind: KindText}, Text: "MiXeD", JSON: `"MiXeD"`},
		},
	},
	{
		Types: "bytea",
		JSON:  `string, hex form "\\x..."`,
		Examples: []TypeExample{
			{SQLType: "bytea", OID: 17, Text: `\x00ff`, JSON: `"\\x00ff"`},
		},
	},
	{
		Types: "uuid",
		JSON:  "string",
		Examples: []TypeExample{
			{SQLType: "uuid", OID: 2950, Text: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", JSON: `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		},
	},
	{
		Types: "json, jsonb",
		JSON: "the document itself, embedded; numbers in it are JSON numbers (read by the spine as Python does: " +
			"1.50 becomes 1.5). A document the spine could not store faithfully (nesting deeper than 256, " +
			"an integer of more than 4000 digits, a number beyond the float range) is sent as a string. " +
			"The JSON document null cannot be told from SQL NULL, and of duplicate keys in json the spine keeps the last",
		Examples: []TypeExample{
			{SQLType: "jsonb", OID: 3802, Text: `{"a": [1, 2.5, null, true], "b": {"c": "x"}}`, JSON: `{"a":[1,2.5,null,true],"b":{"c":"x"}}`},
			{SQLType: "json", OID: 114, Text: `{"x": 1e400}`, JSON: `"{\"x\": 1e400}"`},
		},
	},
	{
		Types: "date",
		JSON:  "string, ISO 8601; BC dates as astronomical years (1 BC is 0000); infinity and -infinity kept",
		Examples: []TypeExample{
			{SQLType: "date", OID: 1082, Text: "0044-03-15 BC", JSON: `"-0043-03-15"`},
			{SQLType: "date", OID: 1082, Text: "infinity", JSON: `"infinity"`},
		},
	},
	{
		Types: "time, timetz",
		JSON:  "string, ISO 8601, offset as +HH:MM",
		Examples: []TypeExample{
			{SQLType: "timetz", OID: 1266, Text: "10:00:00.5+05:30", JSON: `"10:00:00.5+05:30"`},
		},
	},
	{
		Types: "timestamp",
		JSON:  "string, ISO 8601, fraction as stored (microseconds at most)",
		Examples: []TypeExample{
			{SQLType: "timestamp", OID: 1114, Text: "2026-11-22 10:00:00.123456", JSON: `"2026-11-22T10:00:00.123456"`},
		},
	},
	{
		Types: "timestamptz",
		JSON:  "string, ISO 8601 in UTC with an explicit +00:00",
		Examples: []TypeExample{
			{SQLType: "timestamptz", OID: 1184, Text: "2026-11-22 04:30:00.5+00", JSON: `"2026-11-22T04:30:00.5+00:00"`},
			{SQLType: "timestamptz", OID: 1184, Text: "-infinity", JSON: `"-infinity"`},
		},
	},
	{
		Types: "interval",
		JSON:  "string, ISO 8601 duration",
		Examples: []TypeExample{
			{SQLType: "interval", OID: 1186, Text: "P1Y2M3DT4H5M6.5S", JSON: `"P1Y2M3DT4H5M6.5S"`},
		},
	},
	{
		Types: "inet, cidr, macaddr, macaddr8",
		JSON:  "string",
		Examples: []TypeExample{
			{SQLType: "inet", OID: 869, Text: "192.168.0.1/24", JSON: `"192.168.0.1/24"`},
		},
	},
	{
		Types: "bit(n), varbit",
		JSON:  "string of 0 and 1",
		Examples: []TypeExample{
			{SQLType: "bit(3)", OID: 1560, Text: "101", JSON: `"101"`},
		},
	},
	{
		Types: "xml, tsvector, tsquery",
		JSON:  "string",
		Examples: []TypeExample{
			{SQLType: "tsvector", OID: 3614, Text: `'a b' 'c':1A`, JSON: `"'a b' 'c':1A"`},
		},
	},
	{
		Types: "point, line, lseg, box, path, polygon, circle",
		JSON:  "string",
		Examples: []TypeExample{
			{SQLType: "box", OID: 603, Text: "(1,1),(0,0)", JSON: `"(1,1),(0,0)"`},
		},
	},
	{
		Types: "range and multirange types",
		JSON:  "string",
		Examples: []TypeExample{
			{SQLType: "int4range", OID: 3904, Text: "[1,5)", JSON: `"[1,5)"`},
			{SQLType: "int4multirange", OID: 4451, Text: "{[1,3),[5,7)}", JSON: `"{[1,3),[5,7)}"`},
		},
	},
	{
		Types: "arrays",
		JSON: "array, nested for each dimension, elements mapped as their type, NULL as null; " +
			"lower bounds other than 1 are dropped",
		Examples: []TypeExample{
			{SQLType: "int4[]", OID: 1007, Text: "{{1,2},{3,NULL}}", JSON: "[[1,2],[3,null]]"},
			{SQLType: "text[]", OID: 1009, Text: `{"a,b","{c}","d\"e","NULL",NULL}`, JSON: `["a,b","{c}","d\"e","NULL",null]`},
			{SQLType: "numeric[]", OID: 1231, Text: "[0:1]={1.50,NaN}", JSON: `["1.50","NaN"]`},
		},
	},
	{
		Types: "enums",
		JSON:  "string, the label",
		Examples: []TypeExample{
			{SQLType: "mood", Type: &Type{Name: "public.mood", Kind: KindText}, Text: "happy", JSON: `"happy"`},
		},
	},
	{
		Types: "domains",
		JSON:  "as their base type",
		Examples: []TypeExample{
			{SQLType: "price", Type: &Type{Name: "public.price", Kind: KindNumeric}, Text: "9.90", JSON: `"9.90"`},
		},
	},
	{
		Types: "composite types",
		JSON:  "object keyed by field name, fields mapped as their type, an empty field as null",
		Examples: []TypeExample{
			{SQLType: "pair", Type: &Type{Name: "public.pair", Kind: KindComposite, Fields: []Field{
				{Name: "a", Type: exampleInt4}, {Name: "b", Type: exampleText}, {Name: "c", Type: exampleText},
			}}, Text: `(1,"x, ""y""",)`, JSON: `{"a":1,"b":"x, \"y\"","c":null}`},
		},
	},
	{
		Types: "any other type (pg_lsn, tid, user-defined base types, ...)",
		JSON:  "string, the type's text form",
		Examples: []TypeExample{
			{SQLType: "pg_lsn", OID: 3220, Text: "16/B374D848", JSON: `"16/B374D848"`},
		},
	},
}

// TypeTableMarkdown renders TypeTable as Markdown: a short rationale, then
// one table row per TypeMappingRow with its examples as "text → JSON".
func TypeTableMarkdown() string {
	var b strings.Builder
	b.WriteString("<!-- Generated from pgjson.TypeTable by `go test ./pgjson -run TypeTable -update`: do not edit by hand. -->\n\n")
	b.WriteString("Each column of a row becomes one member of the event's `old`/`new` object, keyed by column name; " +
		"SQL NULL is `null` for every type. The agent receives each value as its type's text form " +
		"and maps it as below.\n\n")
	b.WriteString("The spine parses each event and serialises it again as Python's `json` module does, so a JSON number " +
		"with a fraction or an exponent becomes a float64 there: `12.50` would be stored as `12.5` and " +
		"`0.1000000000000000055` as `0.1`. Values that must stay exact (numeric, money, timestamps, " +
		"intervals, and everything without a JSON counterpart) therefore travel as strings; integers " +
		"stay numbers because Python keeps integers of any size, and float4/float8 stay numbers because " +
		"their shortest text form is exactly what a float64 reads back.\n\n")
	b.WriteString("| PostgreSQL type | JSON | Examples (text form → JSON) |\n")
	b.WriteString("|---|---|---|\n")
	for _, r := range TypeTable {
		b.WriteString("| ")
		b.WriteString(mdCell(r.Types))
		b.WriteString(" | ")
		b.WriteString(mdCell(r.JSON))
		b.WriteString(" | ")
		for i, ex := range r.Examples {
			if i > 0 {
				b.WriteString("<br>")
			}
			b.WriteString(mdCode(ex.Text))
			b.WriteString(" → ")
			b.WriteString(mdCode(ex.JSON))
		}
		b.WriteString(" |\n")
	}
	return b.String()
}

// mdCell escapes the characters that would end a Markdown table cell.
func mdCell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}

// mdCode writes s as an inline code span inside a table cell: the fence is
// longer than any run of backticks in s, and '|' is escaped (GitHub's
// tables split cells before they parse code spans).
func mdCode(s string) string {
	longest, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == '`' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	fence := strings.Repeat("`", longest+1)
	pad := ""
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") || strings.HasPrefix(s, " ") || strings.HasSuffix(s, " ") {
		pad = " "
	}
	return fence + pad + mdCell(s) + pad + fence
}
