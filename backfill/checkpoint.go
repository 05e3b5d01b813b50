package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/catalog"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// CheckpointOptions tune a checkpoint.
type CheckpointOptions struct {
	// LockTimeout bounds each chunk's wait for the SHARE lock (default 10s).
	LockTimeout time.Duration
	// ChunkRows is the most rows one chunk reads (default 10,000): writers
	// of the table wait for one chunk at most. Tables without a primary key
	// are read in one chunk.
	ChunkRows int
	// OnRows is called after each chunk with the rows read so far (progress).
	OnRows func(rows int64)
	// BetweenChunks, for tests, is called after chunk n is committed and
	// before the next one begins (not after the last).
	BetweenChunks func(n int64)
}

// DefaultChunkRows is the default CheckpointOptions.ChunkRows.
const DefaultChunkRows = 10000

// CheckpointResult is what a checkpoint wrote.
type CheckpointResult struct {
	ID     int64
	Table  string
	Rows   int64
	Digest string // the sum of the chunks' digests
	Chunks int64
	// KeyColumns is the primary key the chunks page by; empty when the
	// table has none (then it was read in one chunk, and verify can compare
	// counts and digests but not name keys).
	KeyColumns []string
	// LongestLock is the longest time one chunk held the SHARE lock.
	LongestLock time.Duration
}

// ErrCheckpointUnwatched is wrapped when the table was unwatched while a
// checkpoint ran: the agent would drop its later chunks.
var ErrCheckpointUnwatched = errors.New("the table was unwatched during the checkpoint")

// ErrWatchChanged is wrapped when the watch's column list or row filter
// changed while a checkpoint ran: its chunks would not describe the same
// rows.
var ErrWatchChanged = errors.New("the watch's column list or row filter changed during the checkpoint")

// ErrTableChanged is wrapped when the table's columns, their types or its
// primary key changed while a checkpoint ran (ALTER TABLE between chunks):
// its chunks would not describe rows of one definition.
var ErrTableChanged = errors.New("the table's definition changed during the checkpoint; run it again")

// Checkpoint writes a digest of a watched table's rows into the WAL, in
// chunks by primary key: each chunk's row count, an order-independent hash
// of its rows' canonical JSON (in the mapping events use, the watch's
// column list included), and per row a pair of 6-byte hashes (its key's
// and its row's) that let verify name the keys that differ. The agent
// turns each chunk into a CHECKPOINT event at exactly its point of commit
// order, and `pgaudit-cdc verify` compares it with the table folded from
// the events up to there.
//
// Each chunk is one short transaction that takes a SHARE lock (writers
// wait, readers do not), reads the next ChunkRows rows in key order through
// the primary key's index, and writes the chunk into the WAL: the chunk
// describes its rows exactly as of its commit. Writers therefore wait for
// one chunk at most, never for the whole table. The last chunk carries the
// totals. A table without a primary key is read in one chunk (one snapshot,
// one lock for the whole scan) and can be compared as a whole only.
// Each chunk checks, under its lock, that the watch and the table's
// definition (columns, types, primary key) are those of the first: it
// stops with ErrWatchChanged or ErrTableChanged otherwise.
// Memory stays bounded by one chunk's pairs: rows are hashed as they
// stream.
func Checkpoint(ctx context.Context, conn *pgx.Conn, tableOID uint32, o CheckpointOptions) (CheckpointResult, error) {
	if o.LockTimeout <= 0 {
		o.LockTimeout = 10 * time.Second
	}
	if o.ChunkRows <= 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return CheckpointResult{}, err
	}
	undo, err := readAsGuest(ctx, conn)
	if err != nil {
		return CheckpointResult{}, err
	}
	defer undo()
	var w checkpointWatch
	err = conn.QueryRow(ctx, `SELECT n.nspname, c.relname, w.columns, w.row_filter
		FROM pgaudit_cdc.watches w JOIN pg_class c ON c.oid = w.table_oid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.table_oid = $1 AND w.active`, tableOID).Scan(&w.schema, &w.table, &w.columns, &w.rowFilter)
	if errors.Is(err, pgx.ErrNoRows) {
		return CheckpointResult{}, errors.New("the table is not watched: run pgaudit-cdc watch first (a checkpoint describes the audited table)")
	}
	if err != nil {
		return CheckpointResult{}, fmt.Errorf("reading the watch: %w", err)
	}
	w.oid = tableOID
	w.name = ident.Qualified(w.schema, w.table)
	res := CheckpointResult{Table: w.name, KeyColumns: []string{}}
	if w.cols, err = columns(ctx, conn, tableOID, w.columns); err != nil {
		return res, fmt.Errorf("reading the columns of %s: %w", w.name, err)
	}
	for k := 1; ; k++ {
		found := false
		for i, c := range w.cols {
			if c.key == k {
				w.keys = append(w.keys, i)
				res.KeyColumns = append(res.KeyColumns, c.name)
				found = true
			}
		}
		if !found {
			break
		}
	}
	resolver := catalog.NewResolver(conn)
	w.types = make([]*pgjson.Type, len(w.cols))
	for i, c := range w.cols {
		if w.types[i], err = resolver.Resolve(ctx, c.typeOID); err != nil {
			return res, fmt.Errorf("resolving the type of %s.%s: %w", w.name, c.name, err)
		}
	}
	w.query, w.resumeQuery = checkpointQuery(&w, false), checkpointQuery(&w, true)

	var total verify.Digest
	var after []string // the last key read, in its text form
	for chunk := int64(1); ; chunk++ {
		c, err := w.chunk(ctx, conn, o, chunk, after, &total, res.ID)
		if err != nil {
			what := fmt.Sprintf("checkpoint %d of %s stopped after chunk %d (the chunks written are incomplete: run checkpoint again)", res.ID, w.name, chunk-1)
			if chunk == 1 {
				what = "checkpoint of " + w.name
			}
			return res, fmt.Errorf("%s: %w", what, explainRowSecurity(err, w.name))
		}
		if chunk == 1 {
			res.ID = c.id
		}
		res.Chunks = chunk
		res.LongestLock = max(res.LongestLock, c.held)
		after = c.next
		if o.OnRows != nil {
			o.OnRows(total.Rows)
		}
		if c.last {
			break
		}
		if o.BetweenChunks != nil {
			o.BetweenChunks(chunk)
		}
	}
	res.Rows, res.Digest = total.Rows, total.Hex()
	return res, nil
}

// checkpointWatch is what a checkpoint reads of the watch and its table.
type checkpointWatch struct {
	oid                uint32
	schema, table      string
	name               string
	columns            []string // the watch's column list
	rowFilter          *string
	cols               []column
	keys               []int // indexes in cols of the primary key, in key order
	types              []*pgjson.Type
	query, resumeQuery string
}

// checkpointQuery selects the rows of one chunk, each value in its type's
// text output (format('%s'), as the backfill and pgoutput give it). With a
// primary key: the next rows in key order after the key given as
// parameters (resume), through the key's index, $n+1 being LIMIT.
func checkpointQuery(w *checkpointWatch, resume bool) string {
	sel := make([]string, len(w.cols))
	for i, c := range w.cols {
		id := pgx.Identifier{c.name}.Sanitize()
		sel[i] = "CASE WHEN " + id + " IS NULL THEN NULL ELSE format('%s', " + id + ") END"
	}
	var where, keyCols, params []string
	for i, k := range w.keys {
		keyCols = append(keyCols, pgx.Identifier{w.cols[k].name}.Sanitize())
		params = append(params, fmt.Sprintf("CAST($%d AS %s)", i+1, w.cols[k].castTyp))
	}
	limit := 1
	if resume && len(w.keys) > 0 {
		where = append(where, "("+strings.Join(keyCols, ", ")+") > ("+strings.Join(params, ", ")+")")
		limit = len(w.keys) + 1
	}
	if w.rowFilter != nil && *w.rowFilter != "" {
		// The watch's row filter (the operator's SQL, as the publication
		// runs it): the digest covers the rows events are sent for.
		where = append(where, "("+*w.rowFilter+")")
	}
	q := "SELECT " + strings.Join(sel, ", ") + " FROM " + pgx.Identifier{w.schema, w.table}.Sanitize()
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if len(w.keys) > 0 {
		q += " ORDER BY " + strings.Join(keyCols, ", ") + fmt.Sprintf(" LIMIT $%d", limit)
	}
	return q
}

// checkpointChunk is what one chunk wrote.
type checkpointChunk struct {
	id   int64    // the checkpoint's id (chunk 1's control row)
	next []string // the last key read
	last bool
	held time.Duration // how long it held the SHARE lock
}

// chunk reads, hashes and writes one chunk in one transaction: under the
// table's SHARE lock (lock), its rows hashed (hash), the digest written to
// the WAL with the control row that authorises it (write).
func (w *checkpointWatch) chunk(ctx context.Context, conn *pgx.Conn, o CheckpointOptions, chunk int64, after []string,
	total *verify.Digest, id int64) (checkpointChunk, error) {
	var out checkpointChunk
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return out, fmt.Errorf("starting chunk %d: %w", chunk, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	locked, err := w.lock(ctx, tx, o)
	if err != nil {
		return out, err
	}
	hasher, err := w.hash(ctx, tx, o, after, &out)
	if hasher != nil {
		defer hasher.close()
	}
	if err != nil {
		return out, err
	}
	if err := total.AddDigest(hasher.d.Rows, hasher.d.Hex()); err != nil {
		return out, fmt.Errorf("BUG: %w", err)
	}
	if err := w.write(ctx, tx, chunk, id, total, hasher, &out); err != nil {
		return out, err
	}
	if err := tx.Commit(ctx); err != nil {
		return out, fmt.Errorf("committing chunk %d: %w", chunk, err)
	}
	out.held = time.Since(locked)
	return out, nil
}

// lock readies the chunk's transaction: the walsender's text forms, the
// lock timeout, the watch still active and describing the same rows, and
// the table locked against writes with the same definition.
func (w *checkpointWatch) lock(ctx context.Context, tx pgx.Tx, o CheckpointOptions) (locked time.Time, err error) {
	if err := setTextForms(ctx, tx); err != nil {
		return locked, err
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", o.LockTimeout.Milliseconds())); err != nil {
		return locked, fmt.Errorf("setting lock_timeout: %w", err)
	}
	// The watch must still be active, and describe the same rows, when the
	// chunk is written: ordered with watch and unwatch by the registry lock
	// (taken shared, before the table's lock, as the backfill does).
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared($1)", int64(watches.RegistryLockKey)); err != nil {
		return locked, fmt.Errorf("locking the watch registry: %w", err)
	}
	var active bool
	var columnsNow []string
	var filterNow *string
	err = tx.QueryRow(ctx, `SELECT active, columns, row_filter FROM pgaudit_cdc.watches WHERE table_oid = $1 FOR SHARE`,
		w.oid).Scan(&active, &columnsNow, &filterNow)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !active) {
		return locked, ErrCheckpointUnwatched
	}
	if err != nil {
		return locked, fmt.Errorf("checking the watch: %w", err)
	}
	if !slices.Equal(columnsNow, w.columns) || (filterNow == nil) != (w.rowFilter == nil) || (filterNow != nil && *filterNow != *w.rowFilter) {
		return locked, ErrWatchChanged
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{w.schema, w.table}.Sanitize()+" IN SHARE MODE"); err != nil {
		return locked, fmt.Errorf("locking %s against writes for the checkpoint (retry when long transactions on it are done): %w", w.name, err)
	}
	locked = time.Now()
	// The table's definition, under the lock: the same as the chunks before
	// (and the queries) were made for.
	colsNow, err := columns(ctx, tx.Conn(), w.oid, w.columns)
	if err != nil {
		return locked, fmt.Errorf("reading the columns of %s: %w", w.name, err)
	}
	if !slices.Equal(colsNow, w.cols) {
		return locked, fmt.Errorf("%w (columns were %s, are now %s)", ErrTableChanged, describeColumns(w.cols), describeColumns(colsNow))
	}
	return locked, nil
}

// hash reads the chunk's rows (one more than a chunk: is it the last?)
// and hashes them; out says where the next chunk starts.
func (w *checkpointWatch) hash(ctx context.Context, tx pgx.Tx, o CheckpointOptions, after []string, out *checkpointChunk) (*rowHasher, error) {
	query, args := w.query, []any{}
	if len(w.keys) > 0 {
		if after != nil {
			query = w.resumeQuery
			for _, k := range after {
				args = append(args, k)
			}
		}
		args = append(args, o.ChunkRows+1) // one more: is this chunk the last?
	}
	rows, err := tx.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", w.name, err)
	}
	keyNames := make([]string, len(w.keys))
	for i, k := range w.keys {
		keyNames[i] = w.cols[k].name
	}
	hasher := newRowHasher(keyNames)
	vals := make([]*string, len(w.cols))
	ptrs := make([]any, len(w.cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	out.last = true
	for n := 0; rows.Next(); n++ {
		if len(w.keys) > 0 && n == o.ChunkRows {
			out.last = false // a row beyond the chunk: the next chunk starts here
			break
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return hasher, fmt.Errorf("reading %s: %w", w.name, err)
		}
		if err := hasher.add(appendRowJSON(nil, w.cols, w.types, vals)); err != nil {
			rows.Close()
			return hasher, fmt.Errorf("hashing a row of %s: %w", w.name, err)
		}
		if len(w.keys) > 0 {
			out.next = out.next[:0]
			for _, k := range w.keys {
				if vals[k] == nil {
					rows.Close()
					return hasher, fmt.Errorf("BUG: a row of %s has a null primary key column %s", w.name, w.cols[k].name)
				}
				out.next = append(out.next, *vals[k])
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return hasher, fmt.Errorf("reading %s: %w", w.name, err)
	}
	if err := hasher.flush(true); err != nil {
		return hasher, fmt.Errorf("hashing a row of %s: %w", w.name, err)
	}
	return hasher, nil
}

// write emits the chunk's CHECKPOINT message and the control row that
// authorises it.
func (w *checkpointWatch) write(ctx context.Context, tx pgx.Tx, chunk, id int64, total *verify.Digest, hasher *rowHasher, out *checkpointChunk) error {
	d, pairs := hasher.d, hasher.pairs
	keyNames := hasher.keyNames
	var controlID int64
	if err := tx.QueryRow(ctx, `SELECT nextval('pgaudit_cdc.control_id_seq')`).Scan(&controlID); err != nil {
		return fmt.Errorf("numbering the checkpoint: %w", err)
	}
	out.id = id
	if chunk == 1 {
		out.id = controlID
	}
	colNames := make([]string, len(w.cols))
	for i, c := range w.cols {
		colNames[i] = c.name
	}
	msg := decode.CheckpointMessage{ID: out.id, TableOID: w.oid, Schema: w.schema, Table: w.table,
		Chunk: chunk, Last: out.last, Rows: d.Rows, Digest: d.Hex(), KeyColumns: keyNames, Columns: colNames}
	if len(w.keys) > 0 {
		p := verify.EncodePairs(pairs)
		msg.Pairs = &p
	}
	if out.last {
		msg.TotalRows, msg.TotalDigest = &total.Rows, total.Hex()
	}
	content, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding the checkpoint: %w", err)
	}
	// The control row authenticates the chunk: the agent turns the message
	// into a CHECKPOINT event only after a row naming the same table and the
	// message's SHA-256 (taken by the server over the bytes the message
	// holds), written in the same transaction by the agent's role.
	if _, err := tx.Exec(ctx, `INSERT INTO pgaudit_cdc.control (id, action, table_oid, digest, reason)
		VALUES ($1, 'checkpoint', $2, encode(sha256(convert_to($3::text, current_setting('server_encoding'))), 'hex'), $4)`,
		controlID, w.oid, string(content), fmt.Sprintf("checkpoint %d of %s, chunk %d", out.id, w.name, chunk)); err != nil {
		return fmt.Errorf("authorising the checkpoint (the role needs INSERT on pgaudit_cdc.control; see setup --print-sql): %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2::text)", decode.CheckpointPrefix, string(content)); err != nil {
		return fmt.Errorf("writing the checkpoint to the WAL: %w", err)
	}
	return nil
}

// describeColumns names columns with their types and key positions, for
// an error.
func describeColumns(cols []column) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = pgx.Identifier{c.name}.Sanitize() + " " + c.typ
		if c.key > 0 {
			parts[i] += fmt.Sprintf(" (key %d)", c.key)
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// rowHasher hashes a chunk's rows on other goroutines while the chunk
// reads on (decoding each row's JSON into its canonical form costs more
// than PostgreSQL's scan), and sums them in order: the digest, and the
// (key, row) pairs.
type rowHasher struct {
	keyNames []string
	jobs     chan *hashBatch
	queue    []*hashBatch // sent, in order, not summed yet
	cur      *hashBatch
	d        verify.Digest
	pairs    []byte
}

type hashBatch struct {
	rows [][]byte
	hs   [][32]byte
	keys []uint64
	err  error
	done chan struct{}
}

// hashBatchRows is the rows of one batch; hashQueue bounds the batches in
// flight, and so the memory of a chunk without a primary key (the whole
// table).
const hashBatchRows, hashQueue = 256, 8

func newRowHasher(keyNames []string) *rowHasher {
	h := &rowHasher{keyNames: keyNames, jobs: make(chan *hashBatch)}
	for range runtime.GOMAXPROCS(0) {
		go func() {
			for b := range h.jobs {
				b.hash(keyNames)
				close(b.done)
			}
		}()
	}
	return h
}

func (b *hashBatch) hash(keyNames []string) {
	b.hs = make([][32]byte, len(b.rows))
	if len(keyNames) > 0 {
		b.keys = make([]uint64, len(b.rows))
	}
	for i, r := range b.rows {
		h, k, err := verify.RowAndKey(r, keyNames)
		if err != nil {
			b.err = err
			return
		}
		b.hs[i] = h
		if len(keyNames) > 0 {
			if k == nil {
				b.err = fmt.Errorf("BUG: a row lacks its primary key columns %v", keyNames)
				return
			}
			b.keys[i] = verify.KeyHash(k)
		}
	}
}

// add queues one row's JSON (kept until hashed).
func (h *rowHasher) add(row []byte) error {
	if h.cur == nil {
		h.cur = &hashBatch{rows: make([][]byte, 0, hashBatchRows), done: make(chan struct{})}
	}
	h.cur.rows = append(h.cur.rows, row)
	if len(h.cur.rows) < hashBatchRows {
		return nil
	}
	return h.flush(false)
}

// flush sends the current batch and sums the finished ones; all: waits for
// every batch.
func (h *rowHasher) flush(all bool) error {
	if h.cur != nil && len(h.cur.rows) > 0 {
		h.jobs <- h.cur
		h.queue = append(h.queue, h.cur)
		h.cur = nil
	}
	for len(h.queue) > 0 && (all || len(h.queue) > hashQueue) {
		b := h.queue[0]
		<-b.done
		h.queue = h.queue[1:]
		if b.err != nil {
			return b.err
		}
		for i, hs := range b.hs {
			h.d.AddHash(hs)
			if b.keys != nil {
				h.pairs = verify.AppendPair(h.pairs, b.keys[i], hs)
			}
		}
	}
	return nil
}

// close stops the workers (after the batches sent are done).
func (h *rowHasher) close() { close(h.jobs) }

// appendRowJSON writes a row as the JSON object events carry for it.
func appendRowJSON(b []byte, cols []column, types []*pgjson.Type, vals []*string) []byte {
	b = append(b, '{')
	for i, c := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		b = pgjson.AppendString(b, []byte(c.name))
		b = append(b, ':')
		if vals[i] == nil {
			b = append(b, "null"...)
			continue
		}
		out, err := pgjson.AppendValue(b, types[i], []byte(*vals[i]))
		if err != nil {
			out = pgjson.AppendString(b, []byte(*vals[i])) // as the stream does
		}
		b = out
	}
	return append(b, '}')
}
