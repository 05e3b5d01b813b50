// Package backfill sends the rows a watched table already holds as READ
// events, while the live stream keeps flowing, with no row missed and none
// contradicted.
//
// The technique is a watermark written into the WAL itself: each chunk is
// read in primary-key order under FOR SHARE and written, in the same
// transaction, as one logical decoding message (decode.BackfillPrefix). The
// agent turns the message into READ events at the message's place in commit
// order. FOR SHARE makes every change to a chunk row either commit before the
// chunk's transaction (its event comes first, and the READ shows the row after
// it) or wait until after it (its event comes after the READ). So a READ is
// never older than an event before it, and never newer than one after it.
// Progress is stored in the same transaction (pgaudit_cdc.backfills), so a
// backfill interrupted at any moment resumes after its last chunk. Each
// chunk's transaction checks, ordered with watch and unwatch by the registry
// lock, that the table is still watched: a backfill whose table was
// unwatched stops before writing another chunk, stays unfinished, and
// resumes after its last chunk once the table is watched again.
package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// Progress is reported after every chunk.
type Progress struct {
	ID       int64
	Table    string
	Rows     int64 // rows sent so far, resumed runs included
	Chunks   int64
	Estimate int64 // pg_class.reltuples, -1 when unknown
	Resumed  bool
	Done     bool
	// EndLSN is, once Done, the WAL position the agent's slot must confirm
	// for every READ event to be delivered (see WaitDelivered).
	EndLSN pgoutput.LSN
}

// Options tune a backfill.
type Options struct {
	ChunkSize int                  // rows per chunk (default 1000)
	OnChunk   func(p Progress)     // called after each committed chunk
	Logf      func(string, ...any) // optional
}

// ErrNoPrimaryKey is wrapped when the table has no primary key to page by.
var ErrNoPrimaryKey = errors.New("table has no primary key")

// ErrUnwatched is wrapped when the table was unwatched while the backfill
// ran. The backfill stops before the next chunk and stays unfinished: after
// a new watch, running it again resumes after the last chunk sent.
var ErrUnwatched = errors.New("the table was unwatched during the backfill")

type column struct {
	name    string
	typeOID uint32
	typ     string // format_type
	castTyp string // format_type of the base type, for casting the resume key
	key     int    // position in the primary key, 0 when not part of it
}

// Run backfills the watched table oid. It must be watched (active).
func Run(ctx context.Context, conn *pgx.Conn, tableOID uint32, o Options) (Progress, error) {
	if o.ChunkSize <= 0 {
		o.ChunkSize = 1000
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return Progress{}, err
	}
	undo, err := readAsGuest(ctx, conn)
	if err != nil {
		return Progress{}, err
	}
	defer undo()
	var schema, table string
	var rowFilter *string
	var columnsList []string
	var estimate float64
	err = conn.QueryRow(ctx, `SELECT n.nspname, c.relname, w.row_filter, w.columns, c.reltuples
		FROM pgaudit_cdc.watches w JOIN pg_class c ON c.oid = w.table_oid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.table_oid = $1 AND w.active`, tableOID).Scan(&schema, &table, &rowFilter, &columnsList, &estimate)
	if errors.Is(err, pgx.ErrNoRows) {
		return Progress{}, errors.New("the table is not watched: run pgaudit-cdc watch first (a backfill of an unwatched table would be dropped by the agent)")
	}
	if err != nil {
		return Progress{}, fmt.Errorf("reading the watch: %w", err)
	}
	name := ident.Qualified(schema, table)
	cols, err := columns(ctx, conn, tableOID, columnsList)
	if err != nil {
		return Progress{}, fmt.Errorf("reading the columns of %s: %w", name, err)
	}
	keys := keyColumns(cols)
	if len(keys) == 0 {
		return Progress{}, fmt.Errorf("cannot backfill %s: %w; add one, or copy the rows with a tracked migration instead", name, ErrNoPrimaryKey)
	}

	p := Progress{Table: name, Estimate: int64(estimate)}
	lastKey, err := startOrResume(ctx, conn, tableOID, &p)
	if err != nil {
		return p, err
	}

	for {
		query := chunkQuery(schema, table, cols, keys, rowFilter, lastKey != nil)
		n, next, err := chunk(ctx, conn, query, p, schema, table, tableOID, cols, keys, lastKey, o.ChunkSize)
		if errors.Is(err, ErrUnwatched) {
			after := fmt.Sprintf("after chunk %d (%d rows sent)", p.Chunks, p.Rows)
			if p.Chunks == 0 {
				after = "before its first chunk"
			}
			return p, fmt.Errorf("backfill %d of %s stopped %s: %w; to finish it, watch the table again and run the backfill again: it resumes after the last chunk sent",
				p.ID, name, after, err)
		}
		if err != nil {
			return p, fmt.Errorf("backfilling %s (resumable: run it again): %w", name, explainRowSecurity(err, name))
		}
		p.Rows += int64(n)
		p.Chunks++
		lastKey = next
		if n < o.ChunkSize {
			if err := finish(ctx, conn, &p); err != nil {
				return p, err
			}
			if o.OnChunk != nil {
				o.OnChunk(p)
			}
			return p, nil
		}
		if o.OnChunk != nil {
			o.OnChunk(p)
		}
	}
}

// keyColumns returns the primary key's columns, in key order.
func keyColumns(cols []column) []column {
	var keys []column
	for k := 1; ; k++ {
		found := false
		for _, c := range cols {
			if c.key == k {
				keys = append(keys, c)
				found = true
			}
		}
		if !found {
			return keys
		}
	}
}

// startOrResume records a new backfill of the table, or resumes the one
// not finished (p.Resumed), and returns the key it stopped after.
func startOrResume(ctx context.Context, conn *pgx.Conn, tableOID uint32, p *Progress) ([]string, error) {
	var lastKey []string
	err := conn.QueryRow(ctx, `SELECT id, last_key, rows_done, chunks_done FROM pgaudit_cdc.backfills
		WHERE table_oid = $1 AND finished_at IS NULL`, tableOID).Scan(&p.ID, &lastKey, &p.Rows, &p.Chunks)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if err := conn.QueryRow(ctx, `INSERT INTO pgaudit_cdc.backfills (table_oid, table_name) VALUES ($1, $2) RETURNING id`,
			tableOID, p.Table).Scan(&p.ID); err != nil {
			return nil, fmt.Errorf("starting the backfill: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("reading backfill progress: %w", err)
	default:
		p.Resumed = true
	}
	return lastKey, nil
}

// finish records the backfill finished, with the WAL position its last
// chunk lies before: the insert position once it committed (the write
// position is not beyond it, with synchronous_commit off).
func finish(ctx context.Context, conn *pgx.Conn, p *Progress) error {
	var end string
	if err := conn.QueryRow(ctx, `UPDATE pgaudit_cdc.backfills SET finished_at = now(), end_lsn = pg_current_wal_insert_lsn()
		WHERE id = $1 RETURNING end_lsn::text`, p.ID).Scan(&end); err != nil {
		return fmt.Errorf("finishing the backfill: %w", err)
	}
	var err error
	if p.EndLSN, err = pgoutput.ParseLSN(end); err != nil {
		return fmt.Errorf("finishing the backfill: %w", err)
	}
	p.Done = true
	return nil
}

func columns(ctx context.Context, conn *pgx.Conn, oid uint32, only []string) ([]column, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
			coalesce((SELECT k.n FROM unnest(i.indkey) WITH ORDINALITY k(att, n) WHERE k.att = a.attnum), 0)::int
		FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, err
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		err := r.Scan(&c.name, &c.typeOID, &c.typ, &c.key)
		return c, err
	})
	if err != nil {
		return nil, err
	}
	for i, c := range all {
		all[i].castTyp = c.typ
		if c.key > 0 {
			if all[i].castTyp, err = baseType(ctx, conn, c.typeOID, c.typ); err != nil {
				return nil, err
			}
		}
	}
	if len(only) == 0 {
		return all, nil
	}
	// A publication column list: the READs carry the same columns as the
	// stream (the list always includes the primary key).
	var out []column
	for _, c := range all {
		for _, o := range only {
			if c.name == o || c.key > 0 {
				out = append(out, c)
				break
			}
		}
	}
	return out, nil
}

// chunkQuery selects the next chunk in key order, each value in its type's
// text output (format('%s') calls the output function, so char(n) keeps its
// padding, exactly as pgoutput sends it), locking the rows FOR SHARE.
func chunkQuery(schema, table string, cols, keys []column, rowFilter *string, resume bool) string {
	var sel, keyCols, order []string
	for _, c := range cols {
		sel = append(sel, "CASE WHEN "+pgx.Identifier{c.name}.Sanitize()+" IS NULL THEN NULL ELSE format('%s', "+pgx.Identifier{c.name}.Sanitize()+") END")
	}
	var params []string
	for i, k := range keys {
		keyCols = append(keyCols, pgx.Identifier{k.name}.Sanitize())
		order = append(order, pgx.Identifier{k.name}.Sanitize())
		params = append(params, fmt.Sprintf("CAST($%d AS %s)", i+1, k.castTyp))
	}
	var where []string
	limit := 1
	if resume {
		where = append(where, "("+strings.Join(keyCols, ", ")+") > ("+strings.Join(params, ", ")+")")
		limit = len(keys) + 1
	}
	if rowFilter != nil && *rowFilter != "" {
		where = append(where, "("+*rowFilter+")")
	}
	q := "SELECT " + strings.Join(sel, ", ") + " FROM " + pgx.Identifier{schema, table}.Sanitize()
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY " + strings.Join(order, ", ") + fmt.Sprintf(" LIMIT $%d FOR SHARE", limit)
	return q
}

// chunk reads, emits and records one chunk in one transaction.
func chunk(ctx context.Context, conn *pgx.Conn, query string, p Progress, schema, table string, oid uint32,
	cols, keys []column, lastKey []string, size int) (int, []string, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if err := setTextForms(ctx, tx); err != nil {
		return 0, nil, err
	}
	if err := stillWatched(ctx, tx, oid); err != nil {
		return 0, nil, err
	}
	data, next, err := readChunk(ctx, tx, query, cols, keys, lastKey, size)
	if err != nil {
		return 0, nil, err
	}
	// Every chunk goes, the last (fewer rows than asked for, none at all
	// included) marked so: it tells the agent that the backfill is
	// complete.
	msg := decode.BackfillChunk{ID: p.ID, TableOID: oid, Schema: schema, Table: table, Chunk: p.Chunks + 1, Rows: data,
		Last: len(data) < size}
	if err := emitChunk(ctx, tx, msg, cols, next); err != nil {
		return 0, nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, nil, fmt.Errorf("committing a chunk: %w", err)
	}
	return len(data), next, nil
}

// setTextForms makes the transaction's text forms of values the ones the
// walsender produces (replication.SessionGUCs).
func setTextForms(ctx context.Context, tx pgx.Tx) error {
	for k, v := range replication.SessionGUCs {
		if k == "application_name" {
			continue
		}
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", k, v); err != nil {
			return fmt.Errorf("setting %s: %w", k, err)
		}
	}
	return nil
}

// stillWatched checks, under the registry lock, that the table is still
// watched.
func stillWatched(ctx context.Context, tx pgx.Tx, oid uint32) error {
	// The watch must still be active when the chunk is written. The registry
	// lock, taken shared, orders the chunk with watch and unwatch (which take
	// it exclusively, first): an unwatch that came first has committed and is
	// seen here, so no chunk follows it into the WAL; one that comes later
	// waits until this chunk committed, and the agent reads the chunk while
	// the table is still watched. Taking it before any table lock keeps a
	// re-watch (ALTER TABLE, then the registry row) from deadlocking with the
	// chunk. FOR SHARE also makes a stale snapshot (REPEATABLE READ by
	// default_transaction_isolation) fail instead of reading active = true.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock_shared($1)", int64(watches.RegistryLockKey)); err != nil {
		return fmt.Errorf("locking the watch registry: %w", err)
	}
	var active bool
	err := tx.QueryRow(ctx, `SELECT active FROM pgaudit_cdc.watches WHERE table_oid = $1 FOR SHARE`, oid).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !active) {
		return ErrUnwatched
	}
	if err != nil {
		return fmt.Errorf("checking the watch: %w", err)
	}
	return nil
}

// readChunk reads up to size rows after lastKey, and the key of the last.
func readChunk(ctx context.Context, tx pgx.Tx, query string, cols, keys []column, lastKey []string, size int) ([][]*string, []string, error) {
	args := make([]any, 0, len(keys)+1)
	for _, k := range lastKey {
		args = append(args, k)
	}
	args = append(args, size)
	rows, err := tx.Query(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("reading a chunk: %w", err)
	}
	var data [][]*string
	for rows.Next() {
		vals := make([]*string, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("reading a chunk: %w", err)
		}
		data = append(data, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading a chunk: %w", err)
	}
	next := lastKey
	if len(data) > 0 {
		last := data[len(data)-1]
		next = nil
		for _, k := range keys {
			for i, c := range cols {
				if c.name == k.name {
					next = append(next, *last[i])
				}
			}
		}
	}
	return data, next, nil
}

// emitChunk writes the chunk to the WAL with the control row that
// authorises it, and records the backfill's progress.
func emitChunk(ctx context.Context, tx pgx.Tx, msg decode.BackfillChunk, cols []column, next []string) error {
	for _, c := range cols {
		msg.Columns = append(msg.Columns, decode.BackfillColumn{Name: c.name, TypeOID: c.typeOID})
	}
	content, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding a chunk: %w", err)
	}
	// The control row authenticates the chunk: the agent turns a backfill
	// message into READ events only after a row naming the same table
	// and the message's SHA-256, written in the same transaction by a
	// role allowed to write pgaudit_cdc.control.
	// The digest is taken by the server over the bytes the message will
	// hold (the text in the server's encoding).
	if _, err := tx.Exec(ctx, `INSERT INTO pgaudit_cdc.control (action, table_oid, digest, reason)
		VALUES ('backfill', $1, encode(sha256(convert_to($2::text, current_setting('server_encoding'))), 'hex'), $3)`,
		msg.TableOID, string(content), fmt.Sprintf("backfill %d chunk %d", msg.ID, msg.Chunk)); err != nil {
		return fmt.Errorf("authorising a chunk (the role needs INSERT on pgaudit_cdc.control; see setup --print-sql): %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2::text)", decode.BackfillPrefix, string(content)); err != nil {
		return fmt.Errorf("writing a chunk to the WAL: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE pgaudit_cdc.backfills SET last_key = $2, rows_done = rows_done + $3, chunks_done = chunks_done + 1
		WHERE id = $1`, msg.ID, next, len(msg.Rows)); err != nil {
		return fmt.Errorf("recording progress: %w", err)
	}
	return nil
}
