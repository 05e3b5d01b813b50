package pgjson

// TypeKind says how a value's text form maps to JSON.
type TypeKind uint8

// The kinds of column types. A value of each kind arrives as the type's text
// output (under DateStyle=ISO, IntervalStyle=iso_8601, TimeZone=UTC,
// extra_float_digits=1, bytea_output=hex) and is mapped by AppendValue.
const (
	// KindText is emitted as a JSON string of the text form. It is the
	// default: unknown user-defined types, enums, ranges, multiranges,
	// geometric, network, bit strings, uuid, xml, tsvector, money, interval
	// (already ISO 8601, e.g. "P1Y2M3DT4H5M6S"), "char", name, citext, ...
	KindText TypeKind = iota
	// KindInteger (int2, int4, int8, oid) is emitted as a JSON number,
	// exactly as written.
	KindInteger
	// KindFloat (float4, float8) is emitted as a JSON number; NaN, Infinity
	// and -Infinity become the JSON strings "NaN", "Infinity", "-Infinity".
	KindFloat
	// KindNumeric (numeric) is emitted as a JSON string of the exact text
	// ("12.50", "NaN", "Infinity", "-Infinity"), so no precision is lost.
	KindNumeric
	// KindBool maps "t"/"f" to true/false.
	KindBool
	// KindJSON (json, jsonb) is embedded as JSON. Text that is not valid JSON
	// (or not valid UTF-8, or nested too deeply) is emitted as a JSON string.
	KindJSON
	// KindTimestamp maps "2026-11-22 10:00:00.123456" to the ISO 8601 string
	// "2026-11-22T10:00:00.123456". BC years become astronomical years
	// ("0044-03-15 10:00:00 BC" → "-0043-03-15T10:00:00"); "infinity" and
	// "-infinity" are kept as they are.
	KindTimestamp
	// KindTimestampTZ is like KindTimestamp, with the offset written as
	// "+HH:MM" ("+00" → "+00:00"); an offset with seconds keeps them
	// ("+05:30:15").
	KindTimestampTZ
	// KindDate keeps "2026-11-22" as it is; BC years become astronomical
	// years, "infinity" and "-infinity" are kept.
	KindDate
	// KindTime keeps "10:00:00.5" as it is.
	KindTime
	// KindTimeTZ writes the offset as "+HH:MM": "10:00:00+02" →
	// "10:00:00+02:00".
	KindTimeTZ
	// KindBytea keeps the hex text form "\x0102ff" as a JSON string.
	KindBytea
	// KindArray (Elem set) is emitted as a JSON array, nested for
	// multi-dimensional arrays, with NULL elements as null and each element
	// converted with Elem. An explicit bounds prefix ("[0:1]=") is dropped.
	KindArray
	// KindComposite (Fields set) is emitted as a JSON object keyed by field
	// name; an unquoted empty field is null, each field is converted with its
	// own Type.
	KindComposite
)

// Type describes a column type, resolved from the catalog, in enough detail
// to map its text form to JSON.
type Type struct {
	// OID is the type's pg_type OID.
	OID uint32
	// Name is a display name, e.g. "int4", "public.mood", "_text".
	Name string
	// Kind says how the text form maps to JSON.
	Kind TypeKind
	// Elem is the element type (KindArray only).
	Elem *Type
	// Delim is the element delimiter (KindArray only): ',' for all built-ins
	// except box, which uses ';'. 0 means ','.
	Delim byte
	// Fields are the attributes, in order (KindComposite only).
	Fields []Field
}

// Field is one attribute of a composite type.
type Field struct {
	// Name is the attribute name, used as the JSON object key.
	Name string
	// Type is the attribute's type.
	Type *Type
}

// builtin is one row of the built-in type table: a non-array type and
// the OID of its array type (0 if it has none).
type builtin struct {
	oid   uint32
	name  string
	kind  TypeKind
	array uint32
	delim byte
}

// builtins lists the built-in base, range and multirange types (PostgreSQL
// 15, OID < 10000) other than array types, which are derived from the array
// column. See testdata/pg15_builtin_types.txt.
var builtins = [...]builtin{
	{16, "bool", KindBool, 1000, ','},
	{17, "bytea", KindBytea, 1001, ','},
	{18, "char", KindText, 1002, ','},
	{19, "name", KindText, 1003, ','},
	{20, "int8", KindInteger, 1016, ','},
	{21, "int2", KindInteger, 1005, ','},
	{22, "int2vector", KindText, 1006, ','},
	{23, "int4", KindInteger, 1007, ','},
	{24, "regproc", KindText, 1008, ','},
	{25, "text", KindText, 1009, ','},
	{26, "oid", KindInteger, 1028, ','},
	{27, "tid", KindText, 1010, ','},
	{28, "xid", KindText, 1011, ','},
	{29, "cid", KindText, 1012, ','},
	{30, "oidvector", KindText, 1013, ','},
	{114, "json", KindJSON, 199, ','},
	{142, "xml", KindText, 143, ','},
	{194, "pg_node_tree", KindText, 0, ','},
	{600, "point", KindText, 1017, ','},
	{601, "lseg", KindText, 1018, ','},
	{602, "path", KindText, 1019, ','},
	{603, "box", KindText, 1020, ';'},
	{604, "polygon", KindText, 1027, ','},
	{628, "line", KindText, 629, ','},
	{650, "cidr", KindText, 651, ','},
	{700, "float4", KindFloat, 1021, ','},
	{701, "float8", KindFloat, 1022, ','},
	{718, "circle", KindText, 719, ','},
	{774, "macaddr8", KindText, 775, ','},
	{790, "money", KindText, 791, ','},
	{829, "macaddr", KindText, 1040, ','},
	{869, "inet", KindText, 1041, ','},
	{1033, "aclitem", KindText, 1034, ','},
	{1042, "bpchar", KindText, 1014, ','},
	{1043, "varchar", KindText, 1015, ','},
	{1082, "date", KindDate, 1182, ','},
	{1083, "time", KindTime, 1183, ','},
	{1114, "timestamp", KindTimestamp, 1115, ','},
	{1184, "timestamptz", KindTimestampTZ, 1185, ','},
	{1186, "interval", KindText, 1187, ','},
	{1266, "timetz", KindTimeTZ, 1270, ','},
	{1560, "bit", KindText, 1561, ','},
	{1562, "varbit", KindText, 1563, ','},
	{1700, "numeric", KindNumeric, 1231, ','},
	{1790, "refcursor", KindText, 2201, ','},
	{2202, "regprocedure", KindText, 2207, ','},
	{2203, "regoper", KindText, 2208, ','},
	{2204, "regoperator", KindText, 2209, ','},
	{2205, "regclass", KindText, 2210, ','},
	{2206, "regtype", KindText, 2211, ','},
	{2950, "uuid", KindText, 2951, ','},
	{2970, "txid_snapshot", KindText, 2949, ','},
	{3220, "pg_lsn", KindText, 3221, ','},
	{3361, "pg_ndistinct", KindText, 0, ','},
	{3402, "pg_dependencies", KindText, 0, ','},
	{3614, "tsvector", KindText, 3643, ','},
	{3615, "tsquery", KindText, 3645, ','},
	{3642, "gtsvector", KindText, 3644, ','},
	{3734, "regconfig", KindText, 3735, ','},
	{3769, "regdictionary", KindText, 3770, ','},
	{3802, "jsonb", KindJSON, 3807, ','},
	{3904, "int4range", KindText, 3905, ','},
	{3906, "numrange", KindText, 3907, ','},
	{3908, "tsrange", KindText, 3909, ','},
	{3910, "tstzrange", KindText, 3911, ','},
	{3912, "daterange", KindText, 3913, ','},
	{3926, "int8range", KindText, 3927, ','},
	{4072, "jsonpath", KindText, 4073, ','},
	{4089, "regnamespace", KindText, 4090, ','},
	{4096, "regrole", KindText, 4097, ','},
	{4191, "regcollation", KindText, 4192, ','},
	{4451, "int4multirange", KindText, 6150, ','},
	{4532, "nummultirange", KindText, 6151, ','},
	{4533, "tsmultirange", KindText, 6152, ','},
	{4534, "tstzmultirange", KindText, 6153, ','},
	{4535, "datemultirange", KindText, 6155, ','},
	{4536, "int8multirange", KindText, 6157, ','},
	{4600, "pg_brin_bloom_summary", KindText, 0, ','},
	{4601, "pg_brin_minmax_multi_summary", KindText, 0, ','},
	{5017, "pg_mcv_list", KindText, 0, ','},
	{5038, "pg_snapshot", KindText, 5039, ','},
	{5069, "xid8", KindText, 271, ','},
}

// byOID maps every built-in OID (the types above and their arrays) to its
// shared Type.
var byOID = buildTable()

func buildTable() map[uint32]*Type {
	m := make(map[uint32]*Type, 2*len(builtins))
	for i := range builtins {
		b := &builtins[i]
		elem := &Type{OID: b.oid, Name: b.name, Kind: b.kind}
		m[b.oid] = elem
		if b.array != 0 {
			m[b.array] = &Type{OID: b.array, Name: "_" + b.name, Kind: KindArray, Elem: elem, Delim: b.delim}
		}
	}
	return m
}

// Builtin returns the Type of a built-in type OID: every base, range and
// multirange type that PostgreSQL defines with an OID below 10000, and the
// array type of each. The second result is false for any other OID (user
// types, pseudo-types, system catalog row types and their arrays), which
// must be resolved from the catalog. Returned pointers are shared; callers
// must not mutate them.
func Builtin(oid uint32) (*Type, bool) {
	t, ok := byOID[oid]
	return t, ok
}
