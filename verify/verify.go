// Package verify proves, from the spine's events alone, that the audit trail
// is intact, complete and faithful: it recomputes the hash chain, follows the
// links every pgaudit-cdc event carries to its predecessor, and folds each
// table's events up to its checkpoints to compare them with the digest
// PostgreSQL's own rows gave at that point of commit order.
//
// A Verifier is fed the chain in event_id order (Add) and reports at the end
// (Finish). It keeps per table a multiset of row hashes, not the rows.
package verify

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// Check names.
const (
	CheckChain        = "chain integrity"
	CheckCompleteness = "completeness"
	CheckFaithfulness = "faithfulness"
	CheckAuthenticity = "authenticity"
)

// Options configure a Verifier.
type Options struct {
	// Slot is the agent's slot: its events are those whose idempotency key
	// names this slot, or a later generation of it (slot.gN).
	Slot string
	// DeadLetters maps the idempotency keys of events refused by the spine
	// and still pending to their position (from pgaudit_cdc.dead_letters,
	// when the database is at hand): a hole they explain has a known cause.
	DeadLetters map[string]envelope.Position
	// Trail configures the authenticity check: the pinned keys, whether an
	// unsigned trail is accepted, the anchor recorded in the database.
	Trail trail.VerifyOptions
}

// Result is one check's outcome.
type Result struct {
	Check  string `json:"check"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
	// EventID is the first offending event (0 when none).
	EventID int64 `json:"event_id,omitempty"`
	// KnownCause is set when the failure was declared (a GAP event, a
	// pending dead letter): a hole whose cause is already known.
	KnownCause string `json:"known_cause,omitempty"`
	// Keys names the keys on which a checkpoint and the trail disagree
	// (faithfulness, chunked checkpoints), at most MaxKeys of them;
	// KeysTotal counts them all.
	Keys      []KeyDiff `json:"keys,omitempty"`
	KeysTotal int       `json:"keys_total,omitempty"`
}

// MaxKeys bounds the keys one failure lists.
const MaxKeys = 10000

// Report is what Finish returns.
type Report struct {
	Events      int64    `json:"events"`
	Ours        int64    `json:"pgaudit_cdc_events"`
	Checkpoints int      `json:"checkpoints"`
	Results     []Result `json:"results"`
	Failures    []Result `json:"failures"`
	// Authenticity is the trail check's own report (seals, keys, notes).
	Authenticity trail.VerifyReport `json:"authenticity"`
}

// OK reports whether every check passed.
func (r *Report) OK() bool { return len(r.Failures) == 0 }

type generation struct {
	last    envelope.Position // last in-order event
	lastID  int64
	present map[envelope.Position]bool
	// txCommit, txIndex, txEnded describe the transaction being read.
	txCommit pgoutput.LSN
	txIndex  int
	txEnded  bool
	txFirst  int64
	txSeen   int // events of the transaction seen in order
	started  bool
}

// tableState is the fold of one table's events.
type tableState struct {
	rows map[[32]byte]int
	n    int64
	// rebase: a declared gap covers the table, or a partition joined or
	// left it; the fold restarts from its READ baseline and mismatches
	// until then have a known cause.
	rebase bool
	// gap names the declared gap (or the ATTACH or DETACH) that restarted
	// the fold in this generation ("" if none): a checkpoint it interrupted continues here
	// without its first chunks. orphans are those checkpoints, reported
	// once each.
	gap     string
	orphans map[string]bool
	broken  string // why the fold cannot be trusted (first reason)
	// sawFullOld and columnList tell a weakened replica identity from a
	// column list's key-only identity.
	sawFullOld bool
	columnList bool
	// unseen counts UPDATE/DELETE events whose old row was not in the fold.
	unseen      int
	firstUnseen int64
	// ix indexes the fold by key; cps are its chunked checkpoints under way,
	// by checkpoint id.
	ix  keyIndex
	cps map[string]*cpState
}

// Verifier accumulates the checks over a chain read in order.
type Verifier struct {
	o        Options
	report   Report
	first    map[string]bool // check → a failure was recorded
	expect   int64           // next event_id
	prevHash string
	keys     map[string]int64
	gens     map[string]*generation
	missing  map[string]map[envelope.Position]int64 // generation → missing predecessor → event naming it
	tables   map[string]*tableState
	// txHoles are transactions whose events did not all arrive in order:
	// late events may still complete them (see Finish).
	txHoles map[string]map[pgoutput.LSN]*txHole
	late    map[string]map[pgoutput.LSN]*lateTx
	// sources are those of pgaudit-cdc's watches (from its WATCH events):
	// an event with one of them but no key of this agent was not sent by it.
	sources map[string]bool
	// auth checks the agent's seals over its events (package trail).
	auth *trail.Verifier
}

// New returns a Verifier.
func New(o Options) *Verifier {
	return &Verifier{o: o, first: map[string]bool{}, expect: 1, prevHash: chain.Genesis,
		keys: map[string]int64{}, gens: map[string]*generation{}, missing: map[string]map[envelope.Position]int64{},
		tables: map[string]*tableState{},
		// The self-audit source is pgaudit-cdc's own from the start: a WATCH,
		// DROP or GAP "explanation" posted by someone else is caught.
		sources: map[string]bool{envelope.SelfAuditSource: true},
		txHoles: map[string]map[pgoutput.LSN]*txHole{}, late: map[string]map[pgoutput.LSN]*lateTx{},
		auth: trail.NewVerifier(o.Trail)}
}

func (v *Verifier) fail(check string, id int64, known, format string, args ...any) {
	r := Result{Check: check, Detail: fmt.Sprintf(format, args...), EventID: id, KnownCause: known}
	v.report.Failures = append(v.report.Failures, r)
	v.first[check] = true
}

// Add feeds the next event of the chain.
func (v *Verifier) Add(e chain.Event) {
	v.report.Events++
	// The payload's canonical JSON serves the chain's hash and the event's
	// digest alike: encoded once.
	payload := e.Payload
	if payload == nil {
		payload = map[string]any{}
	}
	canon, cerr := chain.Canonical(payload)
	v.checkChain(e, canon, cerr)
	meta, _ := e.Payload["metadata"].(map[string]any)
	key, _ := meta["idempotency_key"].(string)
	op, _ := e.Payload["operation"].(string)
	if trail.IsTrailKey(key) {
		v.auth.Add(trail.Item{EventID: e.EventID, Key: key, Operation: op, Payload: e.Payload})
		return
	}
	sys, keySlot, pos, ok := envelope.ParseKey(key)
	if !ok || (keySlot != v.o.Slot && !strings.HasPrefix(keySlot, v.o.Slot+".g")) {
		if v.sources[e.Source] {
			v.fail(CheckCompleteness, e.EventID, "", "event %d has source %q of a pgaudit-cdc watch but no idempotency key of this agent: it was not sent by pgaudit-cdc", e.EventID, e.Source)
		}
		return
	}
	v.report.Ours++
	v.authenticate(e, canon, key, sys, keySlot, pos, op)
	gen := envelope.KeyPrefix(sys, keySlot) // one capture generation
	table, _ := e.Payload["table"].(string)
	redelivered, _ := meta[envelope.MarkRedelivered].(bool)
	late, _ := meta[envelope.MarkLate].(bool)
	v.checkCompleteness(e, meta, key, gen, pos, op, redelivered || late)
	w, _ := e.Payload["watch"].(map[string]any)
	prevWatch, _ := e.Payload["previous"].(map[string]any)
	newName, _ := w["table"].(string)
	oldName, _ := prevWatch["table"].(string)
	switch op {
	case envelope.OpWatch, envelope.OpRewatch:
		if src, ok := w["source"].(string); ok {
			v.sources[src] = true
		}
		// A rename keeps the watch: the table's fold follows its name.
		if op == envelope.OpRewatch && oldName != "" && newName != "" && oldName != newName {
			if t, ok := v.tables[gen+"|"+oldName]; ok {
				v.tables[gen+"|"+newName] = t
				delete(v.tables, gen+"|"+oldName)
			}
		}
		if newName != "" {
			cols, _ := w["columns"].([]any)
			excl, _ := w["exclude_columns"].([]any)
			v.table(gen + "|" + newName).columnList = len(cols) > 0 || len(excl) > 0
		}
	case envelope.OpDrop:
		// A table of the same name later is another table.
		delete(v.tables, gen+"|"+oldName)
	case envelope.OpTruncate:
		if _, ok := e.Payload["partition"]; !ok {
			break
		}
		// A partition truncated by itself: which of its partitioned
		// table's folded rows went is not in the trail.
		v.restartPartition(e, gen, op)
		return
	case envelope.OpAttach, envelope.OpDetach, envelope.OpUnlogged, envelope.OpUnaudited:
		v.restartPartition(e, gen, op)
	case envelope.OpRewrite:
		// DDL rewrote the stored values: the fold no longer holds them.
		rw, _ := e.Payload["rewrite"].(map[string]any)
		part, _ := rw["table"].(string)
		why := fmt.Sprintf("REWRITE of %s at event %d", table, e.EventID)
		for _, name := range []string{table, part} {
			if name != "" {
				v.table(gen + "|" + name).restart(why)
			}
		}
		return
	}
	v.fold(e, op, gen, table)
}

// restartPartition restarts the folds of a partition and of its partitioned
// table from a backfill. The events of a partition carry its partitioned
// table's name, so the trail cannot tell which of the folded rows moved or
// went (or, for an unlogged partition or one whose TRUNCATE was not
// audited, changed unseen).
func (v *Verifier) restartPartition(e chain.Event, gen, op string) {
	p, _ := e.Payload["partition"].(map[string]any)
	part, _ := p["table"].(string)
	root, _ := p["partitioned_table"].(string)
	if part == "" || root == "" {
		v.fail(CheckFaithfulness, e.EventID, "", "%s event %d does not name its partition and partitioned table: the tables whose rows it moved cannot be told", op, e.EventID)
		return
	}
	why := fmt.Sprintf("%s of %s %s at event %d", op, part, root, e.EventID)
	for _, name := range []string{part, root} {
		v.table(gen + "|" + name).restart(why)
	}
}

// authenticate hands one of the agent's events to the authenticity check,
// with its digest computed from the trail's copy.
func (v *Verifier) authenticate(e chain.Event, canon []byte, key, sys, keySlot string, pos envelope.Position, op string) {
	d, err := trail.ItemDigestWithPayload(e.Kind, e.Source, e.Timestamp, e.Payload, canon)
	if err != nil {
		v.fail(CheckAuthenticity, e.EventID, "", "event %d cannot be digested: %v", e.EventID, err)
		return
	}
	v.auth.Add(trail.Item{EventID: e.EventID, Agent: true, Key: key, SystemID: sys, Slot: keySlot, Pos: pos, Operation: op, Digest: d})
}

// finishAuthenticity reports the authenticity check.
func (v *Verifier) finishAuthenticity() {
	r := v.auth.Finish()
	v.report.Authenticity = r
	for _, f := range r.Failures {
		v.fail(CheckAuthenticity, f.EventID, f.KnownCause, "%s", f.Detail)
	}
	if v.first[CheckAuthenticity] {
		return
	}
	detail := fmt.Sprintf("%d pgaudit-cdc events authenticated by %d seals of key %s", r.Authenticated, r.Seals, strings.Join(r.Keys, ", "))
	if !r.Signed {
		detail = "no pgaudit-cdc event to authenticate"
		if v.report.Ours > 0 {
			detail = "unsigned trail accepted (--allow-unsigned): nothing proves these events are pgaudit-cdc's"
		}
	}
	for _, n := range r.Notes {
		detail += "; " + n
	}
	v.report.Results = append(v.report.Results, Result{Check: CheckAuthenticity, Pass: true, Detail: detail})
}

func (v *Verifier) checkChain(e chain.Event, payload []byte, perr error) {
	if e.EventID != v.expect && !v.first[CheckChain] {
		v.fail(CheckChain, e.EventID, "", "event %d follows event %d: events are missing or out of order in the store", e.EventID, v.expect-1)
	}
	v.expect = e.EventID + 1
	if e.PrevHash != v.prevHash && !v.first[CheckChain] {
		v.fail(CheckChain, e.EventID, "", "event %d's prev_hash does not match the hash of the event before it: an event was removed, inserted or altered", e.EventID)
	}
	var h string
	err := perr
	if err == nil {
		h = chain.HashWithPayload(e, payload)
	}
	switch {
	case err != nil && !v.first[CheckChain]:
		v.fail(CheckChain, e.EventID, "", "event %d cannot be hashed: %v", e.EventID, err)
	case err == nil && h != e.Hash && !v.first[CheckChain]:
		v.fail(CheckChain, e.EventID, "", "event %d's content does not match its hash (recomputed %s, stored %s): it was altered after it was appended", e.EventID, h[:12], shortHash(e.Hash))
	}
	v.prevHash = e.Hash
}

// NotChained records a message of the store that is not an event of the
// chain at all (a JetStream stream's message another writer stored, which
// does not parse or hash as a GovernanceEvent): a chain failure naming it.
// The chain goes on after it, from the event before it.
func (v *Verifier) NotChained(id int64, detail string) {
	v.report.Events++
	if id != v.expect && !v.first[CheckChain] {
		v.fail(CheckChain, id, "", "message %d follows event %d: messages are missing or out of order in the store", id, v.expect-1)
	}
	v.expect = id + 1
	v.fail(CheckChain, id, "", "message %d is not an event of the chain (%s): another writer stored it where only pgaudit-cdc writes", id, detail)
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// checkCompleteness follows the capture's events of generation gen: each
// key once, declared gaps, commit order, the named predecessors and whole
// transactions. A late or redelivered event (outOfOrder) fills the hole it
// left instead.
func (v *Verifier) checkCompleteness(e chain.Event, meta map[string]any, key, gen string, pos envelope.Position, op string, outOfOrder bool) {
	if first, dup := v.keys[key]; dup {
		v.fail(CheckCompleteness, e.EventID, "", "event %d repeats the idempotency key of event %d (%s): a duplicate", e.EventID, first, key)
		return
	}
	v.keys[key] = e.EventID
	if op == "GAP" {
		v.declaredGap(e, gen)
	}
	st := v.gens[gen]
	if st == nil {
		st = &generation{present: map[envelope.Position]bool{}}
		v.gens[gen] = st
	}
	st.present[pos] = true
	if outOfOrder {
		v.fillHole(gen, pos, int(v.number(CheckCompleteness, e.EventID, meta, "tx_events")))
		return
	}
	if st.started && !st.last.Less(pos) {
		v.fail(CheckCompleteness, e.EventID, "", "event %d (position %s) is out of commit order after event %d (position %s) and is not marked late", e.EventID, pos, st.lastID, st.last)
	}
	if rawPrev, hasPrev := meta["prev"]; hasPrev {
		v.checkPredecessor(e.EventID, gen, st, rawPrev)
	}
	if idx := int(v.number(CheckCompleteness, e.EventID, meta, "tx_index")); idx > 0 {
		v.checkTransaction(e.EventID, gen, st, pos, idx, int(v.number(CheckCompleteness, e.EventID, meta, "tx_events")))
	}
	st.last, st.lastID, st.started = pos, e.EventID, true
}

// declaredGap reports a GAP event, and restarts the folds of the tables
// it names: the new generation's start from their backfill.
func (v *Verifier) declaredGap(e chain.Event, gen string) {
	g, _ := e.Payload["gap"].(map[string]any)
	v.fail(CheckCompleteness, e.EventID, fmt.Sprintf("declared gap #%v (%v): %v", g["id"], g["reason"], g["detail"]),
		"the capture has a declared hole before event %d", e.EventID)
	tables, _ := g["tables"].([]any)
	for _, t := range tables {
		if name, ok := t.(string); ok {
			v.table(gen + "|" + name).restart(fmt.Sprintf("declared gap #%v (%v)", g["id"], g["reason"]))
		}
	}
}

// fillHole takes a late event (a retried dead letter, or one re-sent after
// a later one landed): it fills the hole it left, in the links and in its
// transaction (txEvents is its tx_events, 0 when it has none).
func (v *Verifier) fillHole(gen string, pos envelope.Position, txEvents int) {
	if m := v.missing[gen]; m != nil {
		delete(m, pos)
	}
	if v.late[gen] == nil {
		v.late[gen] = map[pgoutput.LSN]*lateTx{}
	}
	lt := v.late[gen][pos.CommitLSN]
	if lt == nil {
		lt = &lateTx{}
		v.late[gen][pos.CommitLSN] = lt
	}
	lt.n++
	if txEvents > 0 {
		lt.total = txEvents
	}
}

// checkPredecessor checks the predecessor that event id names
// (metadata.prev): the event before it in the generation, or one still to
// come late.
func (v *Verifier) checkPredecessor(id int64, gen string, st *generation, rawPrev any) {
	switch p := rawPrev.(type) {
	case nil:
		if st.started {
			v.fail(CheckCompleteness, id, "", "event %d does not name its predecessor although events of this capture precede it", id)
		}
	case string:
		prev, ok := envelope.ParsePosition(p)
		switch {
		case !ok:
			v.fail(CheckCompleteness, id, "", "event %d names an unreadable predecessor %q", id, p)
		case st.started && prev != st.last && st.present[prev]:
			v.fail(CheckCompleteness, id, "", "event %d names %s as its predecessor, but %s came last", id, prev, st.last)
		case st.started && prev != st.last:
			if v.missing[gen] == nil {
				v.missing[gen] = map[envelope.Position]int64{}
			}
			v.missing[gen][prev] = id
		}
	}
}

// checkTransaction follows transactions: indices 1..n, the last one saying
// n (txEvents). A transaction left before its last event is a hole.
func (v *Verifier) checkTransaction(id int64, gen string, st *generation, pos envelope.Position, idx, txEvents int) {
	if st.started && st.txIndex > 0 && pos.CommitLSN != st.txCommit && !st.txEnded {
		v.txHole(gen, st.txCommit, st.txFirst, st.txSeen, 0)
	}
	if pos.CommitLSN != st.txCommit {
		st.txCommit, st.txIndex, st.txFirst, st.txEnded, st.txSeen = pos.CommitLSN, 0, id, false, 0
	}
	st.txSeen++
	st.txIndex = idx
	if txEvents > 0 {
		st.txEnded = txEvents == st.txSeen
		if !st.txEnded {
			v.txHole(gen, st.txCommit, st.txFirst, st.txSeen, txEvents)
			st.txEnded = true // recorded
		}
	}
}

// lateTx counts a transaction's events that arrived late, and the count
// its last event gave when that one was late.
type lateTx struct{ n, total int }

// txHole is a transaction seen incomplete in commit order.
type txHole struct {
	first       int64
	seen, total int // events seen in order, the count its last event gave (0: unknown)
	late        int // events of it that arrived late
}

func (v *Verifier) txHole(gen string, commit pgoutput.LSN, first int64, seen, total int) {
	if v.txHoles[gen] == nil {
		v.txHoles[gen] = map[pgoutput.LSN]*txHole{}
	}
	h := v.txHoles[gen][commit]
	if h == nil {
		h = &txHole{first: first}
		v.txHoles[gen][commit] = h
	}
	h.seen = seen
	if total > 0 {
		h.total = total
	}
}

// number reads the whole-number field name of obj (an event's metadata
// or checkpoint): 0 when it is absent. One that is there but is no whole
// number fails check: the agent never writes one, so the event is not
// what it sent.
func (v *Verifier) number(check string, id int64, obj map[string]any, name string) int64 {
	x, ok := obj[name]
	if !ok || x == nil {
		return 0
	}
	var n int64
	var err error
	if num, isNum := x.(json.Number); isNum {
		n, err = num.Int64()
	} else {
		err = fmt.Errorf("a %T", x)
	}
	if err != nil {
		v.fail(check, id, "", "event %d has %s %v, which is not a whole number (%v)", id, name, x, err)
		return 0
	}
	return n
}

// Finish completes the checks and returns the report.
func (v *Verifier) Finish() Report {
	for gen, m := range v.missing {
		for pos, id := range m {
			known := ""
			for key, p := range v.o.DeadLetters {
				if p == pos && strings.HasPrefix(key, gen) {
					known = "the missing event is a dead letter still pending (pgaudit-cdc dead-letters list): retry it"
				}
			}
			v.fail(CheckCompleteness, id, known, "the event before event %d (position %s) is not in the chain", id, pos)
		}
	}
	for gen, holes := range v.txHoles {
		for commit, h := range holes {
			if lt := v.late[gen][commit]; lt != nil {
				h.late = lt.n
				if h.total == 0 {
					h.total = lt.total
				}
			}
			if h.total > 0 && h.seen+h.late == h.total {
				continue // completed by late events
			}
			if len(v.missing[gen]) > 0 && h.total == 0 && h.late == 0 {
				// Already reported as a missing event.
				continue
			}
			v.fail(CheckCompleteness, h.first, "", "the transaction committed at %s is incomplete: %d of its events arrived (%d late), its last event says %d", commit, h.seen+h.late, h.late, h.total)
		}
	}
	for _, st := range v.gens {
		if st.started && !st.txEnded && st.txIndex > 0 {
			// The newest transaction may still be on its way; only a
			// verifier reading a stopped agent's chain can be sure.
			v.report.Results = append(v.report.Results, Result{Check: CheckCompleteness, Pass: true,
				Detail: fmt.Sprintf("the newest transaction (committed at %s) has no last event yet: still being delivered?", st.txCommit)})
		}
	}
	v.unfinishedCheckpoints()
	v.finishAuthenticity()
	for _, c := range []string{CheckChain, CheckCompleteness, CheckFaithfulness} {
		if !v.first[c] {
			detail := map[string]string{
				CheckChain:        fmt.Sprintf("%d events, every hash recomputed and every link checked", v.report.Events),
				CheckCompleteness: fmt.Sprintf("%d pgaudit-cdc events, each linked to its predecessor, no duplicate, in commit order", v.report.Ours),
				CheckFaithfulness: fmt.Sprintf("%d checkpoints match the tables folded from their events", v.report.Checkpoints),
			}[c]
			v.report.Results = append(v.report.Results, Result{Check: c, Pass: true, Detail: detail})
		}
	}
	v.report.Results = append(v.report.Results, v.report.Failures...)
	if v.report.Failures == nil {
		v.report.Failures = []Result{}
	}
	return v.report
}
