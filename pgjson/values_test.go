package pgjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func mustBuiltin(tb testing.TB, oid uint32) *Type {
	tb.Helper()
	t, ok := Builtin(oid)
	if !ok {
		tb.Fatalf("Builtin(%d): not found", oid)
	}
	return t
}

// Test types beyond the built-ins: composites, arrays of them, a domain
// over an array (as the catalog resolver would build them).
var (
	int4Type = &Type{OID: 23, Name: "int4", Kind: KindInteger}
	textType = &Type{OID: 25, Name: "text", Kind: KindText}
	pairType = &Type{OID: 90001, Name: "public.pair", Kind: KindComposite, Fields: []Field{
		{Name: "f1", Type: int4Type}, {Name: "f2", Type: textType}, {Name: "f3", Type: textType},
	}}
	pairArrayType = &Type{OID: 90002, Name: "public._pair", Kind: KindArray, Elem: pairType, Delim: ','}
	outerType     = &Type{OID: 90003, Name: "public.outer", Kind: KindComposite, Fields: []Field{
		{Name: "id", Type: int4Type},
		{Name: "tags", Type: &Type{OID: 1009, Name: "_text", Kind: KindArray, Elem: textType}},
		{Name: "inner", Type: pairType},
		{Name: "pairs", Type: pairArrayType},
		{Name: "doc", Type: &Type{OID: 3802, Name: "jsonb", Kind: KindJSON}},
	}}
	emptyType      = &Type{OID: 90004, Name: "public.empty", Kind: KindComposite}
	intArrayDomain = &Type{OID: 90005, Name: "public.intarr", Kind: KindArray, Elem: int4Type} // domain over int4[]
	arrayOfArrays  = &Type{OID: 90006, Name: "public._intarr", Kind: KindArray, Elem: intArrayDomain}
	noFieldTypes   = &Type{OID: 90007, Name: "public.nil_types", Kind: KindComposite, Fields: []Field{{Name: "a"}}}
	noElemType     = &Type{OID: 90008, Name: "public._weird", Kind: KindArray}
)

type valueCase struct {
	name string
	t    *Type
	in   string
	want string // expected JSON; "" with err set
	err  bool
}

func runCases(t *testing.T, tests []valueCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("[0,")
			got, err := AppendValue(prefix, tc.t, []byte(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("got %s, want an error", got[len(prefix):])
				}
				if !errors.Is(err, ErrMalformedValue) {
					t.Fatalf("got error %v, want one wrapping ErrMalformedValue", err)
				}
				if string(got) != string(prefix) {
					t.Fatalf("got dst %q, want it unchanged %q", got, prefix)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want %s", err, tc.want)
			}
			if !bytes.HasPrefix(got, prefix) {
				t.Fatalf("got %q, want the prefix %q kept", got, prefix)
			}
			out := got[len(prefix):]
			if string(out) != tc.want {
				t.Fatalf("got %s, want %s", out, tc.want)
			}
			if !json.Valid(out) {
				t.Fatalf("got invalid JSON %q", out)
			}
			if !json.Valid(append(got, ']')) {
				t.Fatalf("got invalid JSON %q in an array", got)
			}
		})
	}
}

func TestAppendValueScalars(t *testing.T) {
	int8T, int2T, int4T, oidT := mustBuiltin(t, 20), mustBuiltin(t, 21), mustBuiltin(t, 23), mustBuiltin(t, 26)
	f4, f8, num := mustBuiltin(t, 700), mustBuiltin(t, 701), mustBuiltin(t, 1700)
	boolT, jsonT, jsonbT := mustBuiltin(t, 16), mustBuiltin(t, 114), mustBuiltin(t, 3802)
	byteaT, textT, intervalT, uuidT := mustBuiltin(t, 17), mustBuiltin(t, 25), mustBuiltin(t, 1186), mustBuiltin(t, 2950)
	deepJSON := strings.Repeat("[", 257) + strings.Repeat("]", 257)
	okJSON := strings.Repeat("[", 256) + strings.Repeat("]", 256)
	hugeInt := "1" + strings.Repeat("0", 4500)
	runCases(t, []valueCase{
		{"int8/zero", int8T, "0", "0", false},
		{"int8/positive", int8T, "42", "42", false},
		{"int8/negative", int8T, "-42", "-42", false},
		{"int8/max", int8T, "9223372036854775807", "9223372036854775807", false},
		{"int8/min", int8T, "-9223372036854775808", "-9223372036854775808", false},
		{"int8/leading_zeros", int8T, "007", "7", false},
		{"int8/minus_zero", int8T, "-0", "0", false},
		{"int2/min", int2T, "-32768", "-32768", false},
		{"int4/max", int4T, "2147483647", "2147483647", false},
		{"oid/max", oidT, "4294967295", "4294967295", false},
		{"int8/empty", int8T, "", "", true},
		{"int8/minus_only", int8T, "-", "", true},
		{"int8/letters", int8T, "abc", "", true},
		{"int8/fraction", int8T, "1.5", "", true},
		{"int8/plus", int8T, "+1", "", true},
		{"int8/leading_space", int8T, " 1", "", true},
		{"int8/trailing_space", int8T, "1 ", "", true},
		{"int8/exponent", int8T, "1e3", "", true},
		{"int8/hex", int8T, "0x10", "", true},

		{"float8/fraction", f8, "1.5", "1.5", false},
		{"float8/integer", f8, "123456789012345", "123456789012345", false},
		{"float8/zero", f8, "0", "0", false},
		{"float8/minus_zero", f8, "-0", "-0.0", false},
		{"float8/max_exp", f8, "1e+308", "1e+308", false},
		{"float8/max", f8, "1.7976931348623157e+308", "1.7976931348623157e+308", false},
		{"float8/min", f8, "-1.7976931348623157e+308", "-1.7976931348623157e+308", false},
		{"float8/small", f8, "1.5e-07", "1.5e-07", false},
		{"float8/denormal", f8, "5e-324", "5e-324", false},
		{"float8/nan", f8, "NaN", `"NaN"`, false},
		{"float8/infinity", f8, "Infinity", `"Infinity"`, false},
		{"float8/minus_infinity", f8, "-Infinity", `"-Infinity"`, false},
		{"float4/max", f4, "3.4028235e+38", "3.4028235e+38", false},
		{"float4/fraction", f4, "0.1", "0.1", false},
		{"float8/empty", f8, "", "", true},
		{"float8/lower_nan", f8, "nan", "", true},
		{"float8/inf", f8, "inf", "", true},
		{"float8/trailing_dot", f8, "1.", "", true},
		{"float8/leading_dot", f8, ".5", "", true},
		{"float8/bare_exponent", f8, "1e", "", true},
		{"float8/double_minus", f8, "--1", "", true},
		{"float8/leading_zero", f8, "01", "", true},
		{"float8/letters", f8, "abc", "", true},

		{"numeric/scale", num, "12.50", `"12.50"`, false},
		{"numeric/negative", num, "-0.001", `"-0.001"`, false},
		{"numeric/zero", num, "0", `"0"`, false},
		{"numeric/nan", num, "NaN", `"NaN"`, false},
		{"numeric/infinity", num, "Infinity", `"Infinity"`, false},
		{"numeric/minus_infinity", num, "-Infinity", `"-Infinity"`, false},
		{"numeric/huge", num, "123456789012345678901234567890.123456789012345678901234567890", `"123456789012345678901234567890.123456789012345678901234567890"`, false},
		{"numeric/big_integer", num, hugeInt, `"` + hugeInt + `"`, false},
		{"numeric/empty", num, "", "", true},
		{"numeric/letters", num, "abc", "", true},
		{"numeric/two_dots", num, "1.2.3", "", true},
		{"numeric/minus_only", num, "-", "", true},
		{"numeric/dot_only", num, ".", "", true},
		{"numeric/quote", num, `1"`, "", true},

		{"bool/true", boolT, "t", "true", false},
		{"bool/false", boolT, "f", "false", false},
		{"bool/empty", boolT, "", "", true},
		{"bool/upper", boolT, "T", "", true},
		{"bool/yes", boolT, "yes", "", true},
		{"bool/one", boolT, "1", "", true},

		{"jsonb/nested", jsonbT, `{"a": [1, 2, {"b": null}], "c": "x y", "d": {"e": true}}`, `{"a":[1,2,{"b":null}],"c":"x y","d":{"e":true}}`, false},
		{"jsonb/array", jsonbT, `[]`, `[]`, false},
		{"jsonb/string", jsonbT, `"str"`, `"str"`, false},
		{"jsonb/number", jsonbT, `123.5e10`, `1235000000000.0`, false},
		{"jsonb/null", jsonbT, `null`, `null`, false},
		{"json/whitespace_kept_in_strings", jsonT, "{\n  \"a b\" : \"c\\n d\",\t\"e\": [ 1 , -2 ]\r\n}", `{"a b":"c\n d","e":[1,-2]}`, false},
		{"json/line_separator", jsonT, "[\"a\u2028b\u2029\"]", `["a\u2028b\u2029"]`, false},
		{"json/unicode", jsonT, `{"é": "日本 \u00e9"}`, `{"\u00e9":"\u65e5\u672c \u00e9"}`, false},
		{"json/invalid", jsonT, `{"a":`, `"{\"a\":"`, false},
		{"json/invalid_utf8", jsonT, "[\"\xff\"]", `"[\"\ufffd\"]"`, false},
		{"json/empty", jsonT, ``, `""`, false},
		{"json/too_deep", jsonT, deepJSON, `"` + deepJSON + `"`, false},
		{"json/deep_ok", jsonT, okJSON, okJSON, false},
		{"json/huge_integer", jsonT, "[" + hugeInt + "]", `"[` + hugeInt + `]"`, false},
		{"json/huge_float", jsonT, "[" + hugeInt + ".5]", `"[` + hugeInt + `.5]"`, false},

		{"bytea/hex", byteaT, `\x0102ff`, `"\\x0102ff"`, false},
		{"bytea/upper_hex", byteaT, `\xABCD`, `"\\xABCD"`, false},
		{"bytea/empty", byteaT, `\x`, `"\\x"`, false},
		{"bytea/odd", byteaT, `\x0`, "", true},
		{"bytea/not_hex", byteaT, `\xzz`, "", true},
		{"bytea/escape_format", byteaT, `\001abc`, "", true},
		{"bytea/plain", byteaT, `abc`, "", true},
		{"bytea/nothing", byteaT, ``, "", true},

		{"text/plain", textT, "hello", `"hello"`, false},
		{"text/empty", textT, "", `""`, false},
		{"text/escapes", textT, "a\"b\\c\nd\te\rf\bg\fh\x01i\x1f", `"a\"b\\c\nd\te\rf\bg\fh\u0001i\u001f"`, false},
		{"text/invalid_utf8", textT, "a\xffb", `"a\ufffdb"`, false},
		{"text/separators", textT, "a\u2028b\u2029c", `"a\u2028b\u2029c"`, false},
		{"text/non_ascii", textT, "é日本😀", `"\u00e9\u65e5\u672c\ud83d\ude00"`, false},
		{"interval/iso", intervalT, "P1Y2M3DT4H5M6.5S", `"P1Y2M3DT4H5M6.5S"`, false},
		{"uuid", uuidT, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, false},
		{"nil_type", nil, "x\"y", `"x\"y"`, false},
		{"unknown_kind", &Type{Name: "odd", Kind: 200}, "v", `"v"`, false},
	})
}

func TestAppendValueDateTime(t *testing.T) {
	ts, tstz, date := mustBuiltin(t, 1114), mustBuiltin(t, 1184), mustBuiltin(t, 1082)
	tm, tmtz := mustBuiltin(t, 1083), mustBuiltin(t, 1266)
	runCases(t, []valueCase{
		{"timestamp/plain", ts, "2026-11-22 10:00:00", `"2026-11-22T10:00:00"`, false},
		{"timestamp/micros", ts, "2026-11-22 10:00:00.123456", `"2026-11-22T10:00:00.123456"`, false},
		{"timestamp/fraction", ts, "2026-11-22 10:00:00.5", `"2026-11-22T10:00:00.5"`, false},
		{"timestamp/bc", ts, "0044-03-15 10:00:00 BC", `"-0043-03-15T10:00:00"`, false},
		{"timestamp/1bc", ts, "0001-01-01 00:00:00 BC", `"0000-01-01T00:00:00"`, false},
		{"timestamp/min", ts, "4714-11-24 00:00:00 BC", `"-4713-11-24T00:00:00"`, false},
		{"timestamp/max", ts, "294276-12-31 23:59:59.999999", `"294276-12-31T23:59:59.999999"`, false},
		{"timestamp/infinity", ts, "infinity", `"infinity"`, false},
		{"timestamp/minus_infinity", ts, "-infinity", `"-infinity"`, false},
		{"timestamp/date_only", ts, "2026-11-22", "", true},
		{"timestamp/iso_t", ts, "2026-11-22T10:00:00", "", true},
		{"timestamp/no_seconds", ts, "2026-11-22 10:00", "", true},
		{"timestamp/offset", ts, "2026-11-22 10:00:00+00", "", true},
		{"timestamp/short_year", ts, "26-11-22 10:00:00", "", true},
		{"timestamp/ad", ts, "2026-11-22 10:00:00 AD", "", true},
		{"timestamp/year0_bc", ts, "0000-01-01 00:00:00 BC", "", true},
		{"timestamp/empty_fraction", ts, "2026-11-22 10:00:00.", "", true},
		{"timestamp/Infinity", ts, "Infinity", "", true},
		{"timestamp/empty", ts, "", "", true},

		{"timestamptz/utc", tstz, "2026-11-22 10:00:00.5+00", `"2026-11-22T10:00:00.5+00:00"`, false},
		{"timestamptz/minutes", tstz, "2026-11-22 10:00:00+05:30", `"2026-11-22T10:00:00+05:30"`, false},
		{"timestamptz/seconds", tstz, "2026-11-22 10:00:00+05:30:15", `"2026-11-22T10:00:00+05:30:15"`, false},
		{"timestamptz/negative", tstz, "2026-11-22 10:00:00.123456-08", `"2026-11-22T10:00:00.123456-08:00"`, false},
		{"timestamptz/lmt", tstz, "1800-01-01 10:00:00-04:56:02", `"1800-01-01T10:00:00-04:56:02"`, false},
		{"timestamptz/bc", tstz, "0044-03-15 10:00:00+00 BC", `"-0043-03-15T10:00:00+00:00"`, false},
		{"timestamptz/infinity", tstz, "infinity", `"infinity"`, false},
		{"timestamptz/minus_infinity", tstz, "-infinity", `"-infinity"`, false},
		{"timestamptz/no_offset", tstz, "2026-11-22 10:00:00", "", true},
		{"timestamptz/one_digit_offset", tstz, "2026-11-22 10:00:00+5", "", true},
		{"timestamptz/short_minutes", tstz, "2026-11-22 10:00:00+05:3", "", true},
		{"timestamptz/four_parts", tstz, "2026-11-22 10:00:00+05:30:15:01", "", true},
		{"timestamptz/z", tstz, "2026-11-22 10:00:00Z", "", true},

		{"date/plain", date, "2026-11-22", `"2026-11-22"`, false},
		{"date/bc", date, "0044-03-15 BC", `"-0043-03-15"`, false},
		{"date/1bc", date, "0001-12-31 BC", `"0000-12-31"`, false},
		{"date/max", date, "5874897-12-31", `"5874897-12-31"`, false},
		{"date/infinity", date, "infinity", `"infinity"`, false},
		{"date/minus_infinity", date, "-infinity", `"-infinity"`, false},
		{"date/timestamp", date, "2026-11-22 10:00:00", "", true},
		{"date/slashes", date, "2026/11/22", "", true},
		{"date/empty", date, "", "", true},
		{"date/short_month", date, "2026-1-22", "", true},

		{"time/fraction", tm, "10:00:00.5", `"10:00:00.5"`, false},
		{"time/plain", tm, "23:59:59", `"23:59:59"`, false},
		{"time/24", tm, "24:00:00", `"24:00:00"`, false},
		{"time/no_seconds", tm, "10:00", "", true},
		{"time/offset", tm, "10:00:00+02", "", true},
		{"time/empty", tm, "", "", true},

		{"timetz/hours", tmtz, "10:00:00+02", `"10:00:00+02:00"`, false},
		{"timetz/minutes", tmtz, "10:00:00.5-03:30", `"10:00:00.5-03:30"`, false},
		{"timetz/seconds", tmtz, "10:00:00-04:56:02", `"10:00:00-04:56:02"`, false},
		{"timetz/no_offset", tmtz, "10:00:00", "", true},
		{"timetz/infinity", tmtz, "infinity", "", true},
	})
}

func TestAppendValueArrays(t *testing.T) {
	ai4, atext, abox := mustBuiltin(t, 1007), mustBuiltin(t, 1009), mustBuiltin(t, 1020)
	anum, ajsonb, atstz := mustBuiltin(t, 1231), mustBuiltin(t, 3807), mustBuiltin(t, 1185)
	abytea, abool, af8 := mustBuiltin(t, 1001), mustBuiltin(t, 1000), mustBuiltin(t, 1022)
	aint4range, adate := mustBuiltin(t, 3905), mustBuiltin(t, 1182)
	deep := func(n int) string { return strings.Repeat("{", n) + "1" + strings.Repeat("}", n) }
	deepWant := func(n int) string { return strings.Repeat("[", n) + "1" + strings.Repeat("]", n) }
	runCases(t, []valueCase{
		{"int4/1d", ai4, "{1,2,3}", "[1,2,3]", false},
		{"int4/empty", ai4, "{}", "[]", false},
		{"int4/empty_spaces", ai4, " { } ", "[]", false},
		{"int4/2d", ai4, "{{1,2},{3,4}}", "[[1,2],[3,4]]", false},
		{"int4/3d", ai4, "{{{1},{2}},{{3},{4}}}", "[[[1],[2]],[[3],[4]]]", false},
		{"int4/nulls", ai4, "{1,NULL,3}", "[1,null,3]", false},
		{"int4/null_lower", ai4, "{null,Null}", "[null,null]", false},
		{"int4/spaces", ai4, "{ 1 , 2 }", "[1,2]", false},
		{"int4/newlines", ai4, "{\n1,\t2\n}", "[1,2]", false},
		{"int4/bounds", ai4, "[0:1]={1,2}", "[1,2]", false},
		{"int4/bounds_2d", ai4, "[1:1][-2:-1]={{1,2}}", "[[1,2]]", false},
		{"int4/bounds_upper_only", ai4, "[2]={1,2}", "[1,2]", false},
		{"int4/quoted_number", ai4, `{"1"," 2"}`, "", true},
		{"int4/quoted_ok", ai4, `{"1","2"}`, "[1,2]", false},
		{"int4/depth_100", ai4, deep(100), deepWant(100), false},
		{"int4/depth_101", ai4, deep(101), "", true},

		{"text/null_quoted", atext, `{"NULL",NULL,null}`, `["NULL",null,null]`, false},
		{"text/specials", atext, `{a,"b c","d,e","f\"g","h\\i","{j}","",k}`, `["a","b c","d,e","f\"g","h\\i","{j}","","k"]`, false},
		{"text/unquoted_escapes", atext, `{a\,b,c\"d,\NULL}`, `["a,b","c\"d","NULL"]`, false},
		{"text/inner_spaces", atext, `{ a b , "c " }`, `["a b","c "]`, false},
		{"text/escaped_trailing_space", atext, `{a\ ,b}`, `["a ","b"]`, false},
		{"text/quotes_mid_element", atext, `{a"b,c"d}`, `["ab,cd"]`, false},
		{"text/quoted_then_space", atext, `{"a" ,"b"}`, `["a","b"]`, false},
		{"text/unicode", atext, `{é,"日 本"}`, `["\u00e9","\u65e5 \u672c"]`, false},
		{"text/2d_strings", atext, `{{a,"b}"},{NULL,""}}`, `[["a","b}"],[null,""]]`, false},
		{"text/escaped_quote_in_quotes", atext, `{"say \"hi\"\\"}`, `["say \"hi\"\\"]`, false},
		{"box/semicolon", abox, `{(1,1),(0,0);(2,2),(1,1)}`, `["(1,1),(0,0)","(2,2),(1,1)"]`, false},
		{"box/single", abox, `{(3,4),(1,2)}`, `["(3,4),(1,2)"]`, false},
		{"numeric/elements", anum, `{1.50,NaN,-Infinity}`, `["1.50","NaN","-Infinity"]`, false},
		{"jsonb/elements", ajsonb, `{"{\"a\": 1}","[1, 2]",NULL,"\"s\""}`, `[{"a":1},[1,2],null,"s"]`, false},
		{"timestamptz/elements", atstz, `{"2026-11-22 10:00:00+00",infinity}`, `["2026-11-22T10:00:00+00:00","infinity"]`, false},
		{"bytea/elements", abytea, `{"\\x01ff","\\x"}`, `["\\x01ff","\\x"]`, false},
		{"bool/elements", abool, `{t,f,NULL}`, `[true,false,null]`, false},
		{"float8/elements", af8, `{NaN,-0,1.5,Infinity}`, `["NaN",-0.0,1.5,"Infinity"]`, false},
		{"int4range/elements", aint4range, `{"[1,3)",empty}`, `["[1,3)","empty"]`, false},
		{"date/bc_elements", adate, `{"0044-03-15 BC",2026-11-22}`, `["-0043-03-15","2026-11-22"]`, false},
		{"domain_over_array/elements", arrayOfArrays, `{"{1,2}","{3}",NULL}`, `[[1,2],[3],null]`, false},
		{"no_elem/text", noElemType, `{a,"b"}`, `["a","b"]`, false},

		{"err/unterminated", ai4, "{1,2", "", true},
		{"err/no_open", ai4, "1,2}", "", true},
		{"err/empty_element", ai4, "{1,,2}", "", true},
		{"err/trailing_delim", ai4, "{1,}", "", true},
		{"err/only_delim", ai4, "{,}", "", true},
		{"err/junk_after", ai4, "{1,2}x", "", true},
		{"err/mixed_sub_first", ai4, "{{1},2}", "", true},
		{"err/mixed_elem_first", ai4, "{1,{2}}", "", true},
		{"err/ragged", ai4, "{{1,2},{3}}", "", true},
		{"err/unterminated_quote", atext, `{"a}`, "", true},
		{"err/escape_at_end", atext, `{a\`, "", true},
		{"err/escaped_close", atext, `{a\}`, "", true},
		{"err/brace_in_element", atext, `{a{b}`, "", true},
		{"err/bad_element", ai4, "{abc}", "", true},
		{"err/bounds_unclosed", ai4, "[0:1{1}", "", true},
		{"err/bounds_letters", ai4, "[a:b]={1}", "", true},
		{"err/bounds_no_eq", ai4, "[0:1]{1,2}", "", true},
		{"err/empty", ai4, "", "", true},
		{"err/open_only", ai4, "{", "", true},
		{"err/two_arrays", ai4, "{1}{2}", "", true},
		{"err/bad_jsonb_is_string", ajsonb, `{"{"}`, `["{"]`, false},
	})
}

func TestAppendValueComposites(t *testing.T) {
	// Nested composites need their inner literal quoted (doubling quotes at
	// every level), so the depth cap is exercised with composites inside a
	// deep array instead: 99 dimensions + 1 composite = 100 levels.
	oneField := &Type{OID: 1, Name: "one", Kind: KindComposite, Fields: []Field{{Name: "x", Type: int4Type}}}
	oneArr := &Type{OID: 2, Name: "_one", Kind: KindArray, Elem: oneField}
	deep := func(n int) string { return strings.Repeat("{", n) + `"(1)"` + strings.Repeat("}", n) }
	deepWant := func(n int) string { return strings.Repeat("[", n) + `{"x":1}` + strings.Repeat("]", n) }
	nested := &Type{OID: 3, Name: "n3", Kind: KindComposite, Fields: []Field{{Name: "a", Type: &Type{
		OID: 4, Name: "n2", Kind: KindComposite, Fields: []Field{{Name: "b", Type: oneField}, {Name: "c", Type: textType}}}}}}
	runCases(t, []valueCase{
		{"pair/null_last", pairType, `(1,"a b",)`, `{"f1":1,"f2":"a b","f3":null}`, false},
		{"pair/all_null", pairType, `(,,)`, `{"f1":null,"f2":null,"f3":null}`, false},
		{"pair/empty_strings", pairType, `(1,"","")`, `{"f1":1,"f2":"","f3":""}`, false},
		{"pair/doubled_quotes", pairType, `(2,"say ""hi""","back\\slash")`, `{"f1":2,"f2":"say \"hi\"","f3":"back\\slash"}`, false},
		{"pair/null_word_and_spaces", pairType, `(3,NULL, x )`, `{"f1":3,"f2":"NULL","f3":" x "}`, false},
		{"pair/specials", pairType, `(4,"a,b)c",\"q)`, `{"f1":4,"f2":"a,b)c","f3":"\"q"}`, false},
		{"pair/partly_quoted", pairType, `(5,a"b,c"d,"")`, `{"f1":5,"f2":"ab,cd","f3":""}`, false},
		{"pair/parens_inside", pairType, `(6,(x,"(y)")`, `{"f1":6,"f2":"(x","f3":"(y)"}`, false},
		{"pair/newline", pairType, "(7,\"a\nb\",)", `{"f1":7,"f2":"a\nb","f3":null}`, false},
		{"pair/surrounding_space", pairType, ` (8,a,b) `, `{"f1":8,"f2":"a","f3":"b"}`, false},
		{"outer/nested", outerType, `(7,"{a,""b c""}","(1,x,)","{""(2,y,z)"",NULL}","{""k"": [1, 2]}")`,
			`{"doc":{"k":[1,2]},"id":7,"inner":{"f1":1,"f2":"x","f3":null},"pairs":[{"f1":2,"f2":"y","f3":"z"},null],"tags":["a","b c"]}`, false},
		{"outer/nulls", outerType, `(,,,,)`, `{"doc":null,"id":null,"inner":null,"pairs":null,"tags":null}`, false},
		{"outer/empty_array", outerType, `(1,{},,{},)`, `{"doc":null,"id":1,"inner":null,"pairs":[],"tags":[]}`, false},
		{"array_of_pairs", pairArrayType, `{"(1,a,)","(2,\"b c\",\"\")",NULL,"(,,)"}`, `[{"f1":1,"f2":"a","f3":null},{"f1":2,"f2":"b c","f3":""},null,{"f1":null,"f2":null,"f3":null}]`, false},
		{"array_of_pairs/empty", pairArrayType, `{}`, `[]`, false},
		{"empty_type", emptyType, `()`, `{}`, false},
		{"nil_field_type", noFieldTypes, `(a)`, `{"a":"a"}`, false},
		{"nested/3", nested, `("(""(1)"",""a """"b"""""")")`, `{"a":{"b":{"x":1},"c":"a \"b\""}}`, false},
		{"depth/100", oneArr, deep(99), deepWant(99), false},
		{"depth/101", oneArr, deep(100), "", true},

		{"err/too_few", pairType, `(1,a)`, "", true},
		{"err/too_many", pairType, `(1,a,b,c)`, "", true},
		{"err/no_parens", pairType, `1,a,b`, "", true},
		{"err/unterminated", pairType, `(1,a,b`, "", true},
		{"err/bad_field", pairType, `(x,a,b)`, "", true},
		{"err/junk_after", pairType, `(1,a,b)x`, "", true},
		{"err/unterminated_quote", pairType, `("1,a,b)`, "", true},
		{"err/escape_at_end", pairType, `(1,a,b\`, "", true},
		{"err/empty", pairType, ``, "", true},
		{"err/empty_type_with_field", emptyType, `(1)`, "", true},
		{"err/empty_type_open", emptyType, `(`, "", true},
		{"err/array_in_composite", outerType, `(1,"{a",,,)`, "", true},
		{"err/composite_in_array", pairArrayType, `{"(1,a)"}`, "", true},
	})
}

func TestAppendString(t *testing.T) {
	long := strings.Repeat("abcdefgh", 10)
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", `""`},
		{"ascii", "hello world", `"hello world"`},
		{"quote", `a"b`, `"a\"b"`},
		{"backslash", `a\b`, `"a\\b"`},
		{"short_escapes", "\n\r\t\b\f", `"\n\r\t\b\f"`},
		{"nul", "\x00", `"\u0000"`},
		{"unit_separator", "\x1f", `"\u001f"`},
		{"esc", "\x1b[0m", `"\u001b[0m"`},
		{"del", "\x7f", `"\u007f"`},
		{"slash_and_html", "</script>&<>", `"</script>&<>"`},
		{"latin", "é", `"\u00e9"`},
		{"cjk", "日本語", `"\u65e5\u672c\u8a9e"`},
		{"emoji", "😀", `"\ud83d\ude00"`},
		{"line_separator", "\u2028", `"\u2028"`},
		{"paragraph_separator", "x\u2029y", `"x\u2029y"`},
		{"invalid_byte", "\xff", `"\ufffd"`},
		{"truncated_rune", "a\xe2\x82", `"a\ufffd\ufffd"`},
		{"surrogate", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
		{"overlong", "\xc0\xaf", `"\ufffd\ufffd"`},
		{"long_plain", long, `"` + long + `"`},
		{"long_quote_at_9", "abcdefghi\"jklmnopq", `"abcdefghi\"jklmnopq"`},
		{"long_ctl_at_15", "abcdefghijklmno\nq", `"abcdefghijklmno\nq"`},
		{"long_utf8_at_7", "abcdefgé12345678", `"abcdefg\u00e912345678"`},
		{"long_backslash_at_8", `abcdefgh\ijklmnop`, `"abcdefgh\\ijklmnop"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendString([]byte("x"), []byte(tc.in))
			if string(got[1:]) != tc.want || got[0] != 'x' {
				t.Fatalf("got %s, want x%s", got, tc.want)
			}
			if !json.Valid(got[1:]) {
				t.Fatalf("got invalid JSON %q", got[1:])
			}
			if utf8.ValidString(tc.in) {
				var back string
				if err := json.Unmarshal(got[1:], &back); err != nil || back != tc.in {
					t.Fatalf("got %q (%v) back, want %q", back, err, tc.in)
				}
			}
		})
	}
	t.Run("every_byte_at_every_offset", func(t *testing.T) {
		for c := 0; c < 256; c++ {
			for off := 0; off < 17; off++ {
				in := []byte(strings.Repeat("a", off) + string(rune(0)) + "bcdefghijklmnopqrstu")
				in[off] = byte(c)
				got := AppendString(nil, in)
				if !json.Valid(got) {
					t.Fatalf("byte %#x at %d: got invalid JSON %q", c, off, got)
				}
				var back string
				if err := json.Unmarshal(got, &back); err != nil {
					t.Fatalf("byte %#x at %d: got %v", c, off, err)
				}
				want := string(bytes.ToValidUTF8(in, []byte("\uFFFD")))
				if c >= 0x80 {
					want = strings.Repeat("a", off) + "\uFFFD" + "bcdefghijklmnopqrstu"
				}
				if back != want {
					t.Fatalf("byte %#x at %d: got %q, want %q", c, off, back, want)
				}
			}
		}
	})
}

// TestAppendValueNoAllocs checks that a typical row converts without
// allocating once dst has room. json and jsonb values are left out: they
// are parsed to be written in canonical form (sorted keys), which
// allocates.
func TestAppendValueNoAllocs(t *testing.T) {
	row := slices.DeleteFunc(benchRow(t), func(c benchCol) bool { return c.t.Kind == KindJSON })
	dst := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(200, func() {
		var err error
		out := dst[:0]
		for _, c := range row {
			if out, err = AppendValue(out, c.t, c.text); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("got %v allocations per row, want 0", allocs)
	}
}

type benchCol struct {
	t    *Type
	text []byte
}

func benchRow(tb testing.TB) []benchCol {
	return []benchCol{
		{mustBuiltin(tb, 23), []byte("123456")},
		{mustBuiltin(tb, 25), []byte("Order shipped to \"Main St\" warehouse, dock 4")},
		{mustBuiltin(tb, 1700), []byte("1234.50")},
		{mustBuiltin(tb, 1184), []byte("2026-11-22 10:00:00.123456+00")},
		{mustBuiltin(tb, 16), []byte("t")},
		{mustBuiltin(tb, 3802), []byte(`{"sku": "A-1", "qty": 3, "tags": ["x", "y"]}`)},
		{mustBuiltin(tb, 1009), []byte(`{red,"dark blue",NULL}`)},
		{mustBuiltin(tb, 701), []byte("3.14159")},
	}
}

func BenchmarkAppendValue(b *testing.B) {
	row := benchRow(b)
	dst := make([]byte, 0, 4096)
	n := 0
	for _, c := range row {
		n += len(c.text)
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		out := dst[:0]
		for _, c := range row {
			if out, err = AppendValue(out, c.t, c.text); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkAppendString20MB(b *testing.B) {
	in := bytes.Repeat([]byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit. Schön! "), 20<<20/64)
	dst := make([]byte, 0, len(in)+64)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendString(dst[:0], in)
	}
}

// fuzzTypes are the types FuzzAppendValue picks from.
func fuzzTypes(tb testing.TB) []*Type {
	ts := []*Type{nil, pairType, pairArrayType, outerType, emptyType, arrayOfArrays, noFieldTypes, noElemType}
	for _, oid := range []uint32{25, 20, 700, 1700, 16, 114, 3802, 1114, 1184, 1082, 1083, 1266, 17,
		1007, 1009, 1020, 1231, 3807, 1185, 1001, 1000, 1022, 1182, 1183, 1270, 1115, 199} {
		ts = append(ts, mustBuiltin(tb, oid))
	}
	return ts
}

func FuzzAppendValue(f *testing.F) {
	seeds := []struct {
		k  uint8
		in string
	}{
		{0, "x"}, {1, `(1,"a b",)`}, {2, `{"(1,a,)",NULL}`}, {3, `(7,"{a,""b c""}","(1,x,)","{""(2,y,z)""}","{}")`},
		{4, "()"}, {5, `{"{1,2}","{3}"}`}, {8, "-9223372036854775808"}, {9, "1.5e-07"}, {10, "12.50"},
		{11, "t"}, {12, `{"a": [1]}`}, {13, `[1, 2]`}, {14, "0044-03-15 10:00:00 BC"},
		{15, "2026-11-22 10:00:00.5+05:30:15"}, {16, "2026-11-22"}, {17, "10:00:00.5"}, {18, "10:00:00+02"},
		{19, `\x0102ff`}, {20, "[0:1]={{1,2},{3,4}}"}, {21, `{a,"b\"c",NULL,"NULL"}`},
		{22, `{(1,1),(0,0);(2,2),(1,1)}`}, {23, `{1.5,NaN}`}, {24, `{"{\"a\": 1}"}`},
		{25, `{"2026-11-22 10:00:00+00",infinity}`}, {26, `{"\\x01"}`},
	}
	for _, s := range seeds {
		f.Add(s.k, []byte(s.in))
	}
	types := fuzzTypes(f)
	f.Fuzz(func(t *testing.T, k uint8, in []byte) {
		typ := types[int(k)%len(types)]
		prefix := []byte("[")
		got, err := AppendValue(prefix, typ, in)
		if err != nil {
			if !errors.Is(err, ErrMalformedValue) {
				t.Fatalf("got error %v, want one wrapping ErrMalformedValue", err)
			}
			if string(got) != "[" {
				t.Fatalf("got dst %q after an error, want it unchanged", got)
			}
			return
		}
		if !json.Valid(got[1:]) {
			t.Fatalf("got invalid JSON %q for %q", got[1:], in)
		}
		if !utf8.Valid(got) {
			t.Fatalf("got invalid UTF-8 %q for %q", got[1:], in)
		}
	})
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "abc", "a\"b\\c", "\x00\x1f\x7f", "é\u2028\u2029😀", "\xff\xfe", "abcdefgh\nijklmnop"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got := AppendString(nil, in)
		if !json.Valid(got) || !utf8.Valid(got) {
			t.Fatalf("got invalid JSON %q", got)
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("got %v decoding %q", err, got)
		}
		if utf8.Valid(in) && back != string(in) {
			t.Fatalf("got %q back, want %q", back, in)
		}
		if back != strings.ToValidUTF8(string(in), "\uFFFD") && utf8.Valid(in) {
			t.Fatalf("got %q, want %q", back, in)
		}
	})
}
