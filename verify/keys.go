package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// What a KeyDiff found.
const (
	// ProblemRowDiffers: the table's row differs from the trail's.
	ProblemRowDiffers = "row differs"
	// ProblemDeletedInTrail: the table holds the key, the trail deleted it.
	ProblemDeletedInTrail = "deleted in the trail"
	// ProblemNeverInTrail: the table holds a key the trail never showed.
	ProblemNeverInTrail = "never in the trail"
	// ProblemNotInTable: the trail holds the key, the table did not (a row
	// deleted without an event). Found after the checkpoint's last chunk.
	ProblemNotInTable = "not in the table"
	// ProblemSeveralRows: the trail holds several rows with the key (it
	// missed a change: an UPDATE or DELETE showed an old row it never held).
	ProblemSeveralRows = "several rows in the trail"
)

// KeyDiff names one key on which a checkpoint and the audit trail disagree.
type KeyDiff struct {
	// Key is the key's canonical JSON (its key columns), null when the trail
	// never showed it: then only KeyHash names it.
	Key json.RawMessage `json:"key"`
	// KeyHash is the key's 6-byte hash prefix, in hex (the checkpoint's own
	// name for it).
	KeyHash string `json:"key_hash"`
	Problem string `json:"problem"`
	// Chunk is the checkpoint chunk that listed the key (0: none did).
	Chunk int `json:"chunk,omitempty"`
	// EventID is that chunk's event, or the event that last changed the key
	// in the trail for a key no chunk listed.
	EventID int64 `json:"event_id,omitempty"`
	// SameHash lists other keys of the trail with the same KeyHash (a
	// 48-bit collision): the difference is on one of them.
	SameHash []json.RawMessage `json:"same_hash,omitempty"`
}

func (d KeyDiff) String() string {
	var s string
	switch d.Problem {
	case ProblemNeverInTrail:
		s = fmt.Sprintf("a row with key hash %s the trail never saw, in chunk %d", d.KeyHash, d.Chunk)
		return s
	case ProblemRowDiffers:
		s = fmt.Sprintf("%s: the table's row differs from the trail's", d.Key)
	case ProblemDeletedInTrail:
		s = fmt.Sprintf("%s: in the table, but deleted in the trail", d.Key)
	case ProblemNotInTable:
		s = fmt.Sprintf("%s: in the trail, not in the table (deleted without an event)", d.Key)
	case ProblemSeveralRows:
		s = fmt.Sprintf("%s: the trail holds several rows with this key (it missed a change)", d.Key)
	default:
		s = fmt.Sprintf("%s: %s", d.Key, d.Problem)
	}
	if d.Chunk > 0 {
		s += fmt.Sprintf(" (chunk %d)", d.Chunk)
	}
	for _, o := range d.SameHash {
		s += fmt.Sprintf(" (or %s, same key hash)", o)
	}
	return s
}

// keyRow is one folded row: its RowHash and the bytes of its key's SHA-256
// after the prefix, which tell two keys with the same prefix apart.
type keyRow struct {
	h  [32]byte
	k2 uint64
}

// keyed is the fold's rows with one key hash: one, unless the trail
// contradicts the key (or two keys share the prefix).
type keyed struct {
	first keyRow
	more  []keyRow
	at    int64 // the event that last added a row with this key hash
}

func (e *keyed) all() []keyRow { return append([]keyRow{e.first}, e.more...) }

// keyIndex indexes a table's fold by key, so that a chunked checkpoint can
// name the keys that differ. The key columns are learnt from the table's
// first checkpoint that names some (a checkpoint of a table without a
// primary key names none: a key added later is learnt from a later one).
// Until then the index keeps the canonical JSON (large values left out) of
// each row hash in the fold, to index it then, and of the newest rows
// deleted meanwhile, to name their keys: memory follows the fold, not the
// history.
type keyIndex struct {
	cols []string // sorted; nil until a checkpoint names them
	lost string   // why the fold is not indexed by the key (non-empty)
	// pending: the rows in the fold, by row hash, until cols are known.
	pending map[[32]byte][]byte
	// gone: rows deleted (DELETE, TRUNCATE, a declared gap) before cols
	// are known, at most pendingGone of them (the newest; goneOrder is
	// their order), whose keys are named once cols are known.
	gone      map[[32]byte][]byte
	goneOrder [][32]byte
	byKey     map[uint64]keyed
	seen      map[uint64]string   // key hash → canonical key, every key the trail showed
	collide   map[uint64][]string // further keys with a hash already in seen
}

// usable reports whether chunks can be compared key by key.
func (ix *keyIndex) usable() bool { return len(ix.cols) > 0 && ix.lost == "" }

// Rows above pendingWhole bytes of canonical JSON keep only their values of
// at most pendingValue bytes until the key columns are known (key values
// are small: a btree entry is at most a third of a page).
// Of the rows deleted before then, the newest pendingGone are kept, so
// that their keys can be named as deleted in the trail (older ones are
// named by their key hash only).
const (
	pendingWhole = 1024
	pendingValue = 256
	pendingGone  = 10000
)

func keyParts(keyJSON []byte) (uint64, uint64) {
	s := sha256.Sum256(keyJSON)
	return Prefix(s), binary.BigEndian.Uint64(s[PrefixSize : PrefixSize+8])
}

// added records a row added to the fold by event at.
func (ix *keyIndex) added(row any, h [32]byte, canon []byte, at int64) {
	switch {
	case ix.cols == nil:
		if ix.pending == nil {
			ix.pending = map[[32]byte][]byte{}
		}
		if _, ok := ix.pending[h]; !ok {
			ix.pending[h] = reduced(row, canon)
		}
	case ix.usable():
		k, ok := KeyJSON(row, ix.cols)
		if !ok {
			return
		}
		ix.insert(k, h, at)
	}
}

func (ix *keyIndex) insert(k []byte, h [32]byte, at int64) {
	kh, k2 := keyParts(k)
	ix.see(kh, k)
	if ix.byKey == nil {
		ix.byKey = map[uint64]keyed{}
	}
	e, ok := ix.byKey[kh]
	if ok {
		e.more = append(e.more, keyRow{h, k2})
	} else {
		e.first = keyRow{h, k2}
	}
	e.at = at
	ix.byKey[kh] = e
}

func (ix *keyIndex) see(kh uint64, k []byte) {
	if ix.seen == nil {
		ix.seen = map[uint64]string{}
	}
	first, ok := ix.seen[kh]
	switch {
	case !ok:
		ix.seen[kh] = string(k)
	case first != string(k) && !slices.Contains(ix.collide[kh], string(k)):
		if ix.collide == nil {
			ix.collide = map[uint64][]string{}
		}
		ix.collide[kh] = append(ix.collide[kh], string(k))
	}
}

// seeRow records the key of a row an event showed.
func (ix *keyIndex) seeRow(row any) {
	if !ix.usable() {
		return
	}
	if k, ok := KeyJSON(row, ix.cols); ok {
		kh, _ := keyParts(k)
		ix.see(kh, k)
	}
}

// removed records that one row with hash h left the fold. last: no row
// with hash h is left in it. deleted: the row's key left the trail (a
// DELETE), rather than an UPDATE replacing the row (whose key, unless the
// UPDATE changed it, stays in the fold with the new row).
func (ix *keyIndex) removed(row any, h [32]byte, last, deleted bool) {
	if ix.cols == nil {
		if !last {
			return
		}
		canon, ok := ix.pending[h]
		delete(ix.pending, h)
		if ok && deleted {
			ix.bury(h, canon)
		}
		return
	}
	if !ix.usable() {
		return
	}
	k, ok := KeyJSON(row, ix.cols)
	if !ok {
		return
	}
	kh, _ := keyParts(k)
	ix.see(kh, k)
	e, ok := ix.byKey[kh]
	if !ok {
		return
	}
	rows := e.all()
	i := slices.IndexFunc(rows, func(r keyRow) bool { return r.h == h })
	if i < 0 {
		return
	}
	rows = slices.Delete(rows, i, i+1)
	if len(rows) == 0 {
		delete(ix.byKey, kh)
		return
	}
	e.first, e.more = rows[0], rows[1:]
	ix.byKey[kh] = e
}

// bury keeps a deleted row pending the key columns, to name its key then;
// the oldest is forgotten beyond pendingGone.
func (ix *keyIndex) bury(h [32]byte, canon []byte) {
	if canon == nil {
		return
	}
	if _, ok := ix.gone[h]; ok {
		return
	}
	if ix.gone == nil {
		ix.gone = map[[32]byte][]byte{}
	}
	ix.gone[h] = canon
	ix.goneOrder = append(ix.goneOrder, h)
	for len(ix.goneOrder) > pendingGone {
		delete(ix.gone, ix.goneOrder[0])
		ix.goneOrder = ix.goneOrder[1:]
	}
}

// emptied records a TRUNCATE or a restart: no row is left. The keys seen
// stay known; rows pending an index are deleted ones now.
func (ix *keyIndex) emptied() {
	ix.byKey = nil
	for h, canon := range ix.pending {
		ix.bury(h, canon)
	}
	ix.pending = nil
}

// reduced is what the fold keeps of a row until its key columns are known.
func reduced(row any, canon []byte) []byte {
	if len(canon) <= pendingWhole {
		return canon
	}
	m, ok := row.(map[string]any)
	if !ok {
		return nil
	}
	small := map[string]any{}
	for k, v := range m {
		if c, err := chain.Canonical(v); err == nil && len(c) <= pendingValue {
			small[k] = v
		}
	}
	c, err := chain.Canonical(small)
	if err != nil {
		return nil // as for a row that is no object: nothing kept
	}
	return c
}

// learn sets the key columns a checkpoint names, and indexes the rows
// folded so far. rows is the fold's multiset. A checkpoint that names no
// key columns (the table has no primary key, now) teaches nothing: the
// rows stay pending, for a key a later checkpoint names.
func (ix *keyIndex) learn(cols []string, rows map[[32]byte]int) {
	if len(cols) == 0 {
		return
	}
	cols = slices.Sorted(slices.Values(cols))
	if ix.cols != nil {
		if !slices.Equal(ix.cols, cols) && ix.lost == "" {
			ix.lost = fmt.Sprintf("the table's primary key changed from %v to %v during the trail, and the fold is indexed by the first", ix.cols, cols)
			ix.byKey = nil
		}
		return
	}
	ix.cols = cols
	pending, gone := ix.pending, ix.gone
	ix.pending, ix.gone, ix.goneOrder = nil, nil, nil
	for _, canon := range gone {
		if k, ok := pendingKey(canon, cols); ok {
			kh, _ := keyParts(k)
			ix.see(kh, k) // a key the trail showed, deleted since
		}
	}
	for h, canon := range pending {
		k, ok := pendingKey(canon, cols)
		if !ok {
			continue
		}
		if rows[h] == 0 {
			kh, _ := keyParts(k)
			ix.see(kh, k) // a key the trail showed, no longer in the fold
			continue
		}
		for i := 0; i < rows[h]; i++ {
			ix.insert(k, h, 0)
		}
	}
}

// pendingKey is the key of a row kept pending the key columns.
func pendingKey(canon []byte, cols []string) ([]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return nil, false
	}
	return KeyJSON(v, cols)
}

// diff names key hash kh.
func (ix *keyIndex) diff(kh uint64, problem string, chunk int, ev int64) KeyDiff {
	d := KeyDiff{KeyHash: fmt.Sprintf("%012x", kh), Problem: problem, Chunk: chunk, EventID: ev, Key: json.RawMessage("null")}
	if k, ok := ix.seen[kh]; ok {
		d.Key = json.RawMessage(k)
		for _, o := range ix.collide[kh] {
			d.SameHash = append(d.SameHash, json.RawMessage(o))
		}
	}
	return d
}

// compareChunk compares one chunk's pairs with the fold at the chunk's
// place in commit order: each key the chunk lists must be in the fold with
// the same row. It marks the keys in covered, and returns the keys that
// differ and the digest of the fold's rows for the chunk's keys.
func (ix *keyIndex) compareChunk(pairs []Pair, chunk int, ev int64, covered map[uint64]struct{}) ([]KeyDiff, Digest) {
	var diffs []KeyDiff
	var fold Digest
	for _, p := range pairs {
		covered[p.Key] = struct{}{}
		e, ok := ix.byKey[p.Key]
		if !ok {
			problem := ProblemNeverInTrail
			if _, seen := ix.seen[p.Key]; seen {
				problem = ProblemDeletedInTrail
			}
			diffs = append(diffs, ix.diff(p.Key, problem, chunk, ev))
			continue
		}
		rows := e.all()
		sameKey := true
		for _, r := range rows[1:] {
			sameKey = sameKey && r.k2 == rows[0].k2
		}
		if len(rows) > 1 && sameKey {
			for _, r := range rows {
				fold.AddHash(r.h)
			}
			diffs = append(diffs, ix.diff(p.Key, ProblemSeveralRows, chunk, ev))
			continue
		}
		i := slices.IndexFunc(rows, func(r keyRow) bool { return Prefix(r.h) == p.Row })
		if i < 0 {
			fold.AddHash(rows[0].h)
			diffs = append(diffs, ix.diff(p.Key, ProblemRowDiffers, chunk, ev))
			continue
		}
		fold.AddHash(rows[i].h)
	}
	return diffs, fold
}

// uncovered names, after a checkpoint's last chunk, the keys the fold holds
// that no chunk listed and that no event added since the checkpoint began
// (event begin): rows deleted from the table without an event.
func (ix *keyIndex) uncovered(covered map[uint64]struct{}, begin int64) []KeyDiff {
	var diffs []KeyDiff
	for kh, e := range ix.byKey {
		if _, ok := covered[kh]; ok || e.at >= begin {
			continue
		}
		d := ix.diff(kh, ProblemNotInTable, 0, e.at)
		for range e.all() {
			diffs = append(diffs, d)
		}
	}
	sort.Slice(diffs, func(i, j int) bool {
		if c := bytes.Compare(diffs[i].Key, diffs[j].Key); c != 0 {
			return c < 0
		}
		return diffs[i].KeyHash < diffs[j].KeyHash
	})
	return diffs
}
