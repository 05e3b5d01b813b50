package decode

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
)

// TestCheckpointFieldEncoding: payload.checkpoint reads as it always has:
// the chunk and last mark only when chunked, the totals only on the last
// chunk, the key and column lists never null, pairs only when listed.
func TestCheckpointFieldEncoding(t *testing.T) {
	total, pairs := int64(7), "AAEC"
	for _, c := range []struct {
		cp   CheckpointMessage
		want string
	}{
		{CheckpointMessage{ID: 3, Rows: 2, Digest: "ab"},
			`{"columns":[],"digest":"ab","id":3,"key_columns":[],"rows":2}`},
		{CheckpointMessage{ID: 3, Chunk: 1, Rows: 2, Digest: "ab", KeyColumns: []string{"id"}, Columns: []string{"id", "v"}, Pairs: &pairs},
			`{"chunk":1,"columns":["id","v"],"digest":"ab","id":3,"key_columns":["id"],"last":false,"pairs":"AAEC","rows":2}`},
		{CheckpointMessage{ID: 3, Chunk: 2, Last: true, Rows: 0, Digest: "", TotalRows: &total, TotalDigest: ""},
			`{"chunk":2,"columns":[],"digest":"","id":3,"key_columns":[],"last":true,"rows":0,"total_digest":"","total_rows":7}`},
		{CheckpointMessage{ID: 3, Chunk: 2, Rows: 1, Digest: "cd", TotalRows: &total, TotalDigest: "ef"},
			`{"chunk":2,"columns":[],"digest":"cd","id":3,"key_columns":[],"last":false,"rows":1}`},
	} {
		var ev envelope.Event
		if err := ev.SetCheckpoint(checkpointField(c.cp)); err != nil {
			t.Fatal(err)
		}
		if got := string(ev.Fields[0].Value); got != c.want {
			t.Errorf("checkpoint %+v:\n got %s\nwant %s", c.cp, got, c.want)
		}
	}
}

// TestPartitionTruncateMarks: a TRUNCATE of a partition by itself reaches
// the stream as its row of the partitions table counting one more TRUNCATE
// (migration 0019): a TRUNCATE event of its partitioned table's watch that
// names the partition. The marks a TRUNCATE of the partitioned table fires,
// and any mark after it in the transaction with no change of that table in
// between, truncated an empty table: no event. Other row changes are no
// TRUNCATE; a row turning 'unaudited' is an UNAUDITED event.
func TestPartitionTruncateMarks(t *testing.T) {
	const root, parts = 16400, 16500
	s := testStream(root)
	s.cfg.PartitionTable = "partitions"
	partsRel := newMsg('R').U32(parts).Str("pgaudit_cdc").Str("partitions").U8('f').U16(8).
		U8(0).Str("table_oid").U32(26).U32(0xffffffff).
		U8(0).Str("root_oid").U32(26).U32(0xffffffff).
		U8(0).Str("schema_name").U32(25).U32(0xffffffff).
		U8(0).Str("table_name").U32(25).U32(0xffffffff).
		U8(0).Str("root_name").U32(25).U32(0xffffffff).
		U8(0).Str("attached").U32(16).U32(0xffffffff).
		U8(0).Str("how").U32(25).U32(0xffffffff).
		U8(0).Str("truncates").U32(23).U32(0xffffffff)
	row := func(table, how string, truncates int) msg {
		return col().Tuple(col().Text("1"), col().Text(fmt.Sprint(root)), col().Text("public"), col().Text(table),
			col().Text("public.pt"), col().Text("t"), col().Text(how), col().Text(fmt.Sprint(truncates)))
	}
	update := func(table, howBefore string, before int, howAfter string, after int) msg {
		m := newMsg('U').U32(parts).U8('O')
		m = append(m, row(table, howBefore, before)...)
		m = append(m, 'N')
		return append(m, row(table, howAfter, after)...)
	}
	rootRel := newMsg('R').U32(root).Str("public").Str("pt").U8('f').U16(1).U8(1).Str("id").U32(23).U32(0xffffffff)
	items := feed(t, s,
		beginMsg(0x100, 1), rootRel, partsRel,
		update("pt1", "watched", 0, "truncated", 1), // TRUNCATE pt1
		newMsg('T').U32(1).U8(0).U32(root),          // TRUNCATE pt
		update("pt1", "truncated", 1, "truncated", 2),
		update("pt2", "watched", 0, "truncated", 1),
		update("pt2", "truncated", 1, "truncated", 2), // TRUNCATE pt2, empty
		newMsg('I').U32(root).U8('N').Tuple(col().Text("7")),
		update("pt2", "truncated", 2, "truncated", 3), // TRUNCATE pt2, with row 7
		update("pt2", "truncated", 3, "audited", 3),
		update("pt1", "truncated", 2, "unaudited", 2),
		commitMsg(0x100, 0x110),
		beginMsg(0x200, 2),
		newMsg('T').U32(1).U8(0).U32(root),
		commitMsg(0x200, 0x210),
		beginMsg(0x300, 3),
		update("pt1", "unaudited", 2, "truncated", 3), // a new transaction: TRUNCATE pt1
		commitMsg(0x300, 0x310),
	)
	var got []string
	for _, it := range items {
		if it.Kind != ItemEvent {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal(it.Event.Body, &e); err != nil {
			t.Fatal(err)
		}
		pl, _ := e["payload"].(map[string]any)
		line := fmt.Sprint(pl["operation"], " ", pl["table"], " ", e["kind"])
		if p, ok := pl["partition"].(map[string]any); ok {
			line += fmt.Sprint(" ", p["table"], " ", p["how"])
		}
		got = append(got, line)
	}
	want := []string{
		"TRUNCATE public.pt decision_card_status_changed public.pt1 truncated",
		"TRUNCATE public.pt decision_card_status_changed",
		"INSERT public.pt decision_card_status_changed",
		"TRUNCATE public.pt decision_card_status_changed public.pt2 truncated",
		"UNAUDITED pgaudit_cdc.partitions " + envelope.SelfAuditKind + " public.pt1 unaudited",
		"TRUNCATE public.pt decision_card_status_changed",
		"TRUNCATE public.pt decision_card_status_changed public.pt1 truncated",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
