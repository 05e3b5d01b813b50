package agent_test

import (
	"testing"
	"time"
)

func TestScratchCompositeRename(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TYPE pair AS (a int4, b text)`)
	h.exec(`CREATE TABLE comp (id int PRIMARY KEY, p pair)`)
	h.watch("comp", "other", "x")
	h.startAgent()
	h.exec(`INSERT INTO comp VALUES (1, ROW(1, 'x'))`)
	h.waitEvents(1, 30*time.Second)
	if _, err := h.conn.Exec(t.Context(), `ALTER TYPE pair ADD ATTRIBUTE c int`); err != nil {
		t.Logf("add attribute: %v", err)
	}
	h.exec(`ALTER TYPE pair RENAME ATTRIBUTE b TO bb`)
	h.exec(`INSERT INTO comp VALUES (2, ROW(2, 'y', 3))`)
	h.exec(`UPDATE comp SET id = 10 WHERE id = 1`)
	evs := h.expectExactly(3, 300*time.Millisecond)
	for _, e := range evs {
		t.Logf("%s", stored(t, e.Payload["new"]))
	}
}
