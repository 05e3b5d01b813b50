package verify

import (
	"fmt"
	"sort"
	"strings"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// cpState is one checkpoint being compared: its chunks so far, or the one
// snapshot of a checkpoint that is not chunked.
type cpState struct {
	id        string
	begin     int64 // the event of chunk 1
	lastEvent int64
	chunks    int
	covered   map[uint64]struct{} // key hashes the chunks listed
	// pg sums PostgreSQL's chunks; fold the fold's rows for the keys they
	// listed, each at its chunk's place.
	pg, fold Digest
	diffs    []KeyDiff // at most MaxKeys
	ndiffs   int
	problems []string
	firstBad int64  // the first event where something differed
	unnamed  string // why the chunks could not be compared key by key
}

func (st *cpState) addDiffs(ds []KeyDiff, ev int64) {
	if len(ds) == 0 {
		return
	}
	if st.firstBad == 0 {
		st.firstBad = ev
	}
	st.ndiffs += len(ds)
	if room := MaxKeys - len(st.diffs); room > 0 {
		st.diffs = append(st.diffs, ds[:min(room, len(ds))]...)
	}
}

func (st *cpState) problem(ev int64, format string, args ...any) {
	if st.firstBad == 0 {
		st.firstBad = ev
	}
	st.problems = append(st.problems, fmt.Sprintf(format, args...))
}

func stringsOf(xs []any) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// compare handles a CHECKPOINT event: a checkpoint of one snapshot is
// compared with the whole fold; each chunk of a chunked one with the fold's
// rows for the keys it lists, at its place in commit order, and after the
// last chunk the keys no chunk listed are looked for.
func (v *Verifier) compare(e chain.Event, t *tableState, table string) {
	cp, _ := e.Payload["checkpoint"].(map[string]any)
	if cols, ok := cp["key_columns"].([]any); ok {
		t.ix.learn(stringsOf(cols), t.rows)
	}
	id := fmt.Sprint(cp["id"])
	chunk := int(v.number(CheckFaithfulness, e.EventID, cp, "chunk"))
	rows := v.number(CheckFaithfulness, e.EventID, cp, "rows")
	digest, _ := cp["digest"].(string)
	if chunk == 0 {
		// One snapshot of the whole table (written before checkpoints were
		// chunked): no per-key list.
		v.report.Checkpoints++
		st := &cpState{id: id, begin: e.EventID, lastEvent: e.EventID, chunks: 1}
		if err := st.pg.AddDigest(rows, digest); err != nil {
			st.problem(e.EventID, "its digest is unreadable: %v", err)
		}
		st.unnamed = "the checkpoint predates per-key lists"
		v.finishCheckpoint(t, table, st, true)
		return
	}
	st := v.chunkOf(e.EventID, t, table, id, chunk)
	if st == nil {
		return
	}
	st.chunks, st.lastEvent = chunk, e.EventID
	if err := st.pg.AddDigest(rows, digest); err != nil {
		st.problem(e.EventID, "chunk %d (event %d) has an unreadable digest: %v", chunk, e.EventID, err)
	}
	last, _ := cp["last"].(bool)
	encoded, hasPairs := cp["pairs"].(string)
	switch {
	case !hasPairs:
		// A table without a primary key: one chunk, compared as a whole.
		st.unnamed = "the table has no primary key"
		if chunk != 1 || !last {
			st.problem(e.EventID, "chunk %d (event %d) lists no keys, but the checkpoint has several chunks", chunk, e.EventID)
		}
	case !t.ix.usable():
		st.unnamed = t.ix.lost
		if st.unnamed == "" {
			st.unnamed = "the checkpoint names no key columns"
		}
	default:
		comparePairs(e.EventID, t, st, chunk, rows, digest, encoded)
	}
	if !last {
		return
	}
	delete(t.cps, id)
	if _, ok := cp["total_rows"]; ok {
		total, _ := cp["total_digest"].(string)
		if v.number(CheckFaithfulness, e.EventID, cp, "total_rows") != st.pg.Rows || total != st.pg.Hex() {
			st.problem(e.EventID, "its last chunk (event %d) gives %v rows (digest %s) in all, its chunks add up to %d (digest %s): chunks are missing or altered",
				e.EventID, cp["total_rows"], shortHash(total), st.pg.Rows, shortHash(st.pg.Hex()))
		}
	}
	if st.unnamed == "" {
		st.addDiffs(t.ix.uncovered(st.covered, st.begin), e.EventID)
	}
	v.finishCheckpoint(t, table, st, chunk == 1)
}

// chunkOf is the state of checkpoint id that chunk (of event eventID)
// continues: a new one at chunk 1. It is nil for a chunk whose checkpoint's
// first chunk never came, which is reported once.
func (v *Verifier) chunkOf(eventID int64, t *tableState, table, id string, chunk int) *cpState {
	st := t.cps[id]
	switch {
	case chunk == 1:
		v.report.Checkpoints++
		st = &cpState{id: id, begin: eventID, covered: map[uint64]struct{}{}}
		t.cps[id] = st
	case st == nil:
		if t.orphans[id] {
			return nil // reported at its first chunk here
		}
		if t.orphans == nil {
			t.orphans = map[string]bool{}
		}
		t.orphans[id] = true
		known := ""
		if t.gap != "" {
			known = t.gap + " covers this table: the checkpoint began before the gap, its earlier chunks are in the capture before it; run checkpoint again"
		}
		v.fail(CheckFaithfulness, eventID, known, "checkpoint %s of %s: chunk %d (event %d) came without the chunks before it", id, table, chunk, eventID)
		return nil
	case chunk != st.chunks+1:
		st.problem(eventID, "chunk %d (event %d) follows chunk %d: chunks are missing", chunk, eventID, st.chunks)
	}
	return st
}

// comparePairs compares a chunk's per-key list (encoded, rows rows with
// digest) with the trail's fold of the same keys.
func comparePairs(eventID int64, t *tableState, st *cpState, chunk int, rows int64, digest, encoded string) {
	pairs, err := DecodePairs(encoded)
	if err == nil && int64(len(pairs)) != rows {
		err = fmt.Errorf("%d pairs for %d rows", len(pairs), rows)
	}
	if err != nil {
		st.problem(eventID, "chunk %d (event %d) lists its rows unreadably: %v", chunk, eventID, err)
		return
	}
	diffs, fold := t.ix.compareChunk(pairs, chunk, eventID, st.covered)
	st.addDiffs(diffs, eventID)
	_ = st.fold.AddDigest(fold.Rows, fold.Hex()) // Hex is always 64 hex digits: cannot fail
	if len(diffs) == 0 && (fold.Rows != rows || fold.Hex() != digest) {
		st.problem(eventID, "chunk %d (event %d): PostgreSQL had %d rows (digest %s), the trail holds %d rows (digest %s) for its keys although every row's 6-byte hash matches (an event altered to match it, or a collision)",
			chunk, eventID, rows, shortHash(digest), fold.Rows, shortHash(fold.Hex()))
	}
}

// finishCheckpoint reports a checkpoint whose last chunk came. whole: it
// was one snapshot, so the whole fold is compared with it too.
func (v *Verifier) finishCheckpoint(t *tableState, table string, st *cpState, whole bool) {
	var d Digest
	match := len(st.problems) == 0 && st.ndiffs == 0
	if whole {
		d = t.digest()
		match = match && d.Rows == st.pg.Rows && d.Hex() == st.pg.Hex()
	} else if st.unnamed != "" {
		match = false
	}
	if match {
		t.rebase = false
		return
	}
	var detail string
	switch {
	case !whole && st.unnamed != "":
		known := ""
		if t.rebase {
			known = t.gap + " restarted this table's fold, and its backfill is not complete yet"
		}
		v.fail(CheckFaithfulness, st.begin, known, "checkpoint %s of %s (%d chunks, events %d to %d) cannot be compared with the trail: its chunks are compared key by key, and %s",
			st.id, table, st.chunks, st.begin, st.lastEvent, st.unnamed)
		return
	case whole:
		detail = fmt.Sprintf("checkpoint %s of %s (event %d): PostgreSQL had %d rows (digest %s), the audit trail folds to %d rows (digest %s)",
			st.id, table, st.lastEvent, st.pg.Rows, shortHash(st.pg.Hex()), d.Rows, shortHash(d.Hex()))
	default:
		detail = fmt.Sprintf("checkpoint %s of %s (%d chunks, events %d to %d): PostgreSQL had %d rows (digest %s), the audit trail holds %d rows (digest %s) for the keys the chunks listed",
			st.id, table, st.chunks, st.begin, st.lastEvent, st.pg.Rows, shortHash(st.pg.Hex()), st.fold.Rows, shortHash(st.fold.Hex()))
	}
	v.failCheckpoint(t, table, st, detail)
}

func (v *Verifier) failCheckpoint(t *tableState, table string, st *cpState, detail string) {
	if st.ndiffs > 0 {
		detail += fmt.Sprintf("; %d keys differ, the first: %s", st.ndiffs, st.diffs[0])
	} else if st.unnamed != "" {
		detail += fmt.Sprintf(" (keys cannot be named: %s)", st.unnamed)
	}
	for _, p := range st.problems {
		detail += "; " + p
	}
	switch {
	case t.broken != "":
		detail += "; " + t.broken
	case t.unseen > 0:
		detail += fmt.Sprintf("; %d UPDATE/DELETE events (the first is event %d) changed rows the trail never showed: changes made while auditing was bypassed (while the table was unwatched), or rows older than the watch without a backfill", t.unseen, t.firstUnseen)
	default:
		detail += "; rows differ that no event explains: changes made while auditing was bypassed, or rows older than the watch without a backfill (run pgaudit-cdc backfill, then checkpoint again)"
	}
	known := ""
	if t.rebase {
		known = t.gap + " restarted this table's fold, and its backfill is not complete yet"
	}
	ev := st.firstBad
	if ev == 0 {
		ev = st.lastEvent
	}
	v.fail(CheckFaithfulness, ev, known, "%s", detail)
	f := &v.report.Failures[len(v.report.Failures)-1]
	f.Keys, f.KeysTotal = st.diffs, st.ndiffs
}

// unfinishedCheckpoints reports, at Finish, the chunked checkpoints whose
// last chunk never came: what their chunks found, or that they matched so
// far (rows deleted without an event are only found after the last chunk).
func (v *Verifier) unfinishedCheckpoints() {
	names := make([]string, 0, len(v.tables))
	for name := range v.tables {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t := v.tables[name]
		ids := make([]string, 0, len(t.cps))
		for id := range t.cps {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		_, table, _ := strings.Cut(name, "|") // a generation has no "|", a table name may
		for _, id := range ids {
			st := t.cps[id]
			detail := fmt.Sprintf("checkpoint %s of %s has no last chunk (%d chunks, events %d to %d: still being written, or stopped)", id, table, st.chunks, st.begin, st.lastEvent)
			if st.ndiffs == 0 && len(st.problems) == 0 {
				v.report.Results = append(v.report.Results, Result{Check: CheckFaithfulness, Pass: true,
					Detail: detail + ": every key its chunks listed matches the trail; rows deleted without an event are looked for after the last chunk only"})
				continue
			}
			detail += fmt.Sprintf(": PostgreSQL had %d rows (digest %s), the audit trail holds %d rows (digest %s) for the keys the chunks listed",
				st.pg.Rows, shortHash(st.pg.Hex()), st.fold.Rows, shortHash(st.fold.Hex()))
			v.failCheckpoint(t, table, st, detail)
		}
	}
}
