package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// TestRealCaptureDecodes takes real pgoutput messages from a server (a
// peeked slot, protocol 1 with messages) for a varied workload, and checks
// that every one parses and that the stream turns them into valid JSON.
// With PGAUDIT_UPDATE_CORPUS=1 it also writes them into the parser's fuzz
// seed corpus (pgoutput/testdata/fuzz/FuzzParse/real-*).
func TestRealCaptureDecodes(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.exec(`CREATE TYPE mood AS ENUM ('sad', 'happy')`)
	h.exec(`CREATE TABLE cap (id int PRIMARY KEY, t text, n numeric, j jsonb, a int[], m mood, ts timestamptz, b bytea, big text)`)
	h.exec(`CREATE TABLE cap2 (k text)`)
	h.exec(`ALTER TABLE cap REPLICA IDENTITY FULL`)
	h.exec(`ALTER TABLE cap2 REPLICA IDENTITY FULL`)
	h.exec(`CREATE PUBLICATION cap_pub FOR TABLE cap, cap2`)
	h.exec(`SELECT pg_create_logical_replication_slot('cap_slot', 'pgoutput')`)
	for _, sql := range []string{
		`INSERT INTO cap VALUES (1, 'a', 1.50, '{"x": [1, 2]}', '{1,NULL,3}', 'happy', now(), '\x00ff', repeat(md5('x'), 100000))`,
		`INSERT INTO cap VALUES (2, NULL, 'NaN', NULL, '{}', NULL, 'infinity', NULL, NULL)`,
		`UPDATE cap SET t = 'b' WHERE id = 1`,
		`BEGIN; SELECT pg_logical_emit_message(true, 'pgaudit_cdc.annotations', '{"user": "x"}'); DELETE FROM cap WHERE id = 2; COMMIT`,
		`SELECT pg_logical_emit_message(false, 'other', 'non-transactional')`,
		`INSERT INTO cap2 SELECT 'k' || g FROM generate_series(1, 3) g`,
		`ALTER TABLE cap2 ADD COLUMN extra int`,
		`UPDATE cap2 SET extra = 1`,
		`TRUNCATE cap, cap2 RESTART IDENTITY`,
	} {
		h.exec(sql)
	}
	rows, err := h.conn.Query(ctx, `SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes('cap_slot', NULL, NULL,
		'proto_version', '1', 'publication_names', 'cap_pub', 'messages', 'true')`)
	if err != nil {
		t.Fatal(err)
	}
	type msg struct {
		lsn  string
		data []byte
	}
	var msgs []msg
	for rows.Next() {
		var m msg
		if err := rows.Scan(&m.lsn, &m.data); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var oid uint32
	if err := h.conn.QueryRow(ctx, `SELECT 'cap'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	// No Types: the built-in types are resolved, the rest mapped as text.
	s := decode.NewStream(decode.StreamConfig{SystemID: "1", Slot: "cap_slot", RegistrySchema: "pgaudit_cdc", RegistryTable: "watches"},
		map[uint32]decode.Watch{oid: {Kind: "other", Source: "cap", Active: true}})
	kinds := map[byte]int{}
	events := 0
	for i, m := range msgs {
		parsed, err := pgoutput.Parse(m.data)
		if err != nil {
			t.Fatalf("message %d at %s (%q): %v", i, m.lsn, m.data[0], err)
		}
		kinds[m.data[0]]++
		if err := s.Apply(ctx, pgoutput.LSN(i), parsed, func(it decode.Item) error {
			if it.Kind == decode.ItemEvent {
				events++
				if !json.Valid(it.Event.Body) {
					return fmt.Errorf("invalid JSON: %.200s", it.Event.Body)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("message %d at %s: %v", i, m.lsn, err)
		}
	}
	for _, k := range []byte{'B', 'C', 'R', 'Y', 'I', 'U', 'D', 'T', 'M'} {
		if kinds[k] == 0 {
			t.Errorf("the capture has no %q message; got %v", k, kinds)
		}
	}
	if events < 5 {
		t.Errorf("got %d events from the capture, want at least 5", events)
	}
	if os.Getenv("PGAUDIT_UPDATE_CORPUS") != "" {
		dir := filepath.Join("..", "pgoutput", "testdata", "fuzz", "FuzzParse")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			if len(m.data) > 64<<10 {
				continue // keep the corpus small: the TOASTed row is covered by tests
			}
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", m.data)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("real-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.exec(`SELECT pg_drop_replication_slot('cap_slot')`)
}
