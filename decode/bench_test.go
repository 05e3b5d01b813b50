package decode_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// The benchmark row is one of bench/'s orders table: eight columns of the
// kinds an application table has, as pgoutput sends them (text form).
const benchRelID = 16390

var benchColumns = []struct {
	name string
	oid  uint32
	key  bool
	old  string
	new  string
}{
	{"id", 20, true, "424242", "424242"},
	{"account_id", 23, false, "4243", "4243"},
	{"status", 25, false, "paid", "shipped"},
	{"amount", 1700, false, "6060.29", "6061.54"},
	{"paid", 16, false, "f", "t"},
	{"note", 25, false, "order 424242 for customer 4242 via web checkout", "order 424242 for customer 4242 via web checkout"},
	{"created_at", 1184, false, "2026-01-05 21:50:42+00", "2026-01-05 21:50:42+00"},
	{"details", 3802, false, `{"qty": 6, "sku": "SKU-551", "tags": ["gift", "express"]}`, `{"qty": 6, "sku": "SKU-551", "tags": ["gift", "express"], "shipped": true}`},
}

type benchMsg []byte

func (m benchMsg) u8(v byte) benchMsg    { return append(m, v) }
func (m benchMsg) u16(v uint16) benchMsg { return binary.BigEndian.AppendUint16(m, v) }
func (m benchMsg) u32(v uint32) benchMsg { return binary.BigEndian.AppendUint32(m, v) }
func (m benchMsg) u64(v uint64) benchMsg { return binary.BigEndian.AppendUint64(m, v) }
func (m benchMsg) cstr(s string) benchMsg {
	return append(append(m, s...), 0)
}

func (m benchMsg) tuple(old bool) benchMsg {
	m = m.u16(uint16(len(benchColumns)))
	for _, c := range benchColumns {
		v := c.new
		if old {
			v = c.old
		}
		m = append(m.u8('t').u32(uint32(len(v))), v...)
	}
	return m
}

func benchRelation() []byte {
	m := benchMsg{'R'}.u32(benchRelID).cstr("public").cstr("orders").u8('f').u16(uint16(len(benchColumns)))
	for _, c := range benchColumns {
		flags := byte(0)
		if c.key {
			flags = 1
		}
		m = m.u8(flags).cstr(c.name).u32(c.oid).u32(0xffffffff)
	}
	return m
}

func benchInsert() []byte { return benchMsg{'I'}.u32(benchRelID).u8('N').tuple(false) }

func benchUpdate() []byte {
	return benchMsg{'U'}.u32(benchRelID).u8('O').tuple(true).u8('N').tuple(false)
}

// benchStream returns a stream inside a transaction that knows the orders
// relation, with its column types resolved as the agent does (all built in:
// a nil StreamConfig.Types resolves those).
func benchStream(b *testing.B) *decode.Stream {
	s := decode.NewStream(decode.StreamConfig{
		SystemID: "7441925118437418807", Slot: "pgaudit_cdc",
		RegistrySchema: "pgaudit_cdc", RegistryTable: "watches", SchemaRegistryTable: "schema_watches",
	}, map[uint32]decode.Watch{benchRelID: {Kind: "decision_card_status_changed", Source: "procurement-api", Active: true}})
	rel, err := pgoutput.Parse(benchRelation())
	if err != nil {
		b.Fatal(err)
	}
	begin, err := pgoutput.Parse(benchMsg{'B'}.u64(0x1_6B37_4D48).u64(848_000_000_123_456).u32(91_234))
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range []pgoutput.Message{begin, rel} {
		if err := s.Apply(context.Background(), 0x1_6B37_4000, m, func(decode.Item) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// benchDecode parses data and applies it to s, as the agent's reader does
// for each message, checking once that the envelope is valid JSON.
func benchDecode(b *testing.B, data []byte) {
	s := benchStream(b)
	var body []byte
	emit := func(it decode.Item) error {
		body = it.Event.Body
		return nil
	}
	lsn := pgoutput.LSN(0x1_6B37_4100)
	ctx := context.Background()
	var p pgoutput.Parser
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		m, err := p.Parse(data)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Apply(ctx, lsn, m, emit); err != nil {
			b.Fatal(err)
		}
		lsn += 0x100
	}
	if !json.Valid(body) {
		b.Fatalf("invalid envelope: %s", body)
	}
	b.ReportMetric(float64(len(body)), "envelope-bytes")
}

// BenchmarkDecodeInsert is the agent's per-row work for an INSERT: parse the
// pgoutput message and build the PublishRequest envelope.
func BenchmarkDecodeInsert(b *testing.B) { benchDecode(b, benchInsert()) }

// BenchmarkDecodeUpdateFull is the same for an UPDATE with the full old row
// (REPLICA IDENTITY FULL), twice the values.
func BenchmarkDecodeUpdateFull(b *testing.B) { benchDecode(b, benchUpdate()) }

// BenchmarkParseInsert is the pgoutput parser alone.
func BenchmarkParseInsert(b *testing.B) {
	data := benchInsert()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pgoutput.Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFormatWithoutFmt checks that LSN.String and Key, which avoid fmt on
// the hot path, write exactly what the fmt verbs would.
func TestFormatWithoutFmt(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	values := []uint64{0, 1, 0xF, 0x10, 0xFFFFFFFF, 0x1_0000_0000, 0x16_B374_D848, math.MaxUint64}
	for range 10000 {
		values = append(values, rng.Uint64()>>rng.IntN(64))
	}
	for _, v := range values {
		l := pgoutput.LSN(v)
		if got, want := l.String(), fmt.Sprintf("%X/%X", uint32(v>>32), uint32(v)); got != want {
			t.Fatalf("LSN(%#x).String() = %q, want %q", v, got, want)
		}
		seq := uint32(v >> 7)
		p := envelope.Position{CommitLSN: l, Seq: seq}
		if got, want := envelope.Key("7441925118437418807", "pgaudit_cdc", p), fmt.Sprintf("pgaudit-cdc:7441925118437418807:pgaudit_cdc:%016X:%d", v, seq); got != want {
			t.Fatalf("envelope.Key(%#x, %d) = %q, want %q", v, seq, got, want)
		}
	}
}
