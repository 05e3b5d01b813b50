package decode

import (
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
