package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/catalog"
	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
)

// CheckpointOptions tune a checkpoint.
type CheckpointOptions struct {
	// LockTimeout bounds the wait for the SHARE lock (default 10s).
	LockTimeout time.Duration
	// OnRows is called every 10,000 rows read (progress).
	OnRows func(rows int64)
}

// CheckpointResult is what a checkpoint wrote.
type CheckpointResult struct {
	ID     int64
	Table  string
	Rows   int64
	Digest string
}

// Checkpoint writes a digest of a watched table's rows into the WAL: the row
// count and an order-independent hash of each row's canonical JSON, in the
// mapping events use (the watch's column list included). The agent turns it
// into a CHECKPOINT event at exactly that point of commit order, and
// `pgaudit-cdc verify` compares it with the table folded from the events.
//
// The table is read in one transaction holding a SHARE lock (writers wait,
// readers do not), so the digest describes the table exactly as of the
// checkpoint's commit: every change before it in commit order is in the
// digest, none after it. Memory stays constant: rows are hashed as they
// stream. The cost is one scan during which writers of that table wait.
func Checkpoint(ctx context.Context, conn *pgx.Conn, tableOID uint32, o CheckpointOptions) (CheckpointResult, error) {
	if o.LockTimeout <= 0 {
		o.LockTimeout = 10 * time.Second
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return CheckpointResult{}, err
	}
	var schema, table string
	var columnsList []string
	var rowFilter *string
	err := conn.QueryRow(ctx, `SELECT n.nspname, c.relname, w.columns, w.row_filter
		FROM pgaudit_cdc.watches w JOIN pg_class c ON c.oid = w.table_oid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE w.table_oid = $1 AND w.active`, tableOID).Scan(&schema, &table, &columnsList, &rowFilter)
	if errors.Is(err, pgx.ErrNoRows) {
		return CheckpointResult{}, errors.New("the table is not watched: run pgaudit-cdc watch first (a checkpoint describes the audited table)")
	}
	if err != nil {
		return CheckpointResult{}, fmt.Errorf("reading the watch: %w", err)
	}
	name := decode.QualifiedName(schema, table)
	res := CheckpointResult{Table: name}
	cols, err := columns(ctx, conn, tableOID, columnsList)
	if err != nil {
		return res, fmt.Errorf("reading the columns of %s: %w", name, err)
	}
	var keyCols []string
	for k := 1; ; k++ {
		found := false
		for _, c := range cols {
			if c.key == k {
				keyCols = append(keyCols, c.name)
				found = true
			}
		}
		if !found {
			break
		}
	}
	resolver := catalog.NewResolver(conn)
	types := make([]*decode.Type, len(cols))
	for i, c := range cols {
		if types[i], err = resolver.Resolve(ctx, c.typeOID); err != nil {
			return res, fmt.Errorf("resolving the type of %s.%s: %w", name, c.name, err)
		}
	}

	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return res, fmt.Errorf("starting the checkpoint: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	for k, v := range replication.SessionGUCs {
		if k == "application_name" {
			continue
		}
		if _, err := tx.Exec(ctx, "SELECT set_config($1, $2, true)", k, v); err != nil {
			return res, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", o.LockTimeout.Milliseconds())); err != nil {
		return res, fmt.Errorf("setting lock_timeout: %w", err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{schema, table}.Sanitize()+" IN SHARE MODE"); err != nil {
		return res, fmt.Errorf("locking %s against writes for the checkpoint (retry when long transactions on it are done): %w", name, err)
	}
	var sel []string
	for _, c := range cols {
		id := pgx.Identifier{c.name}.Sanitize()
		sel = append(sel, "CASE WHEN "+id+" IS NULL THEN NULL ELSE format('%s', "+id+") END")
	}
	query := "SELECT " + strings.Join(sel, ", ") + " FROM " + pgx.Identifier{schema, table}.Sanitize()
	if rowFilter != nil && *rowFilter != "" {
		// The watch's row filter (the operator's SQL, as the publication
		// runs it): the digest covers the rows events are sent for.
		query += " WHERE (" + *rowFilter + ")"
	}
	rows, err := tx.Query(ctx, query)
	if err != nil {
		return res, fmt.Errorf("reading %s: %w", name, err)
	}
	var d verify.Digest
	vals := make([]*string, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var buf []byte
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return res, fmt.Errorf("reading %s: %w", name, err)
		}
		buf = appendRowJSON(buf[:0], cols, types, vals)
		if err := d.Add(buf); err != nil {
			rows.Close()
			return res, fmt.Errorf("hashing a row of %s: %w", name, err)
		}
		if o.OnRows != nil && d.Rows%10000 == 0 {
			o.OnRows(d.Rows)
		}
	}
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("reading %s: %w", name, err)
	}
	colNames := make([]string, len(cols))
	for i, c := range cols {
		colNames[i] = c.name
	}
	if err := tx.QueryRow(ctx, `SELECT nextval('pgaudit_cdc.control_id_seq')`).Scan(&res.ID); err != nil {
		return res, fmt.Errorf("numbering the checkpoint: %w", err)
	}
	msg := decode.CheckpointMessage{ID: res.ID, TableOID: tableOID, Schema: schema, Table: table,
		Rows: d.Rows, Digest: d.Hex(), KeyColumns: keyCols, Columns: colNames}
	content, err := json.Marshal(msg)
	if err != nil {
		return res, fmt.Errorf("encoding the checkpoint: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO pgaudit_cdc.control (id, action, table_oid, digest, reason)
		VALUES ($1, 'checkpoint', $2, encode(sha256(convert_to($3::text, current_setting('server_encoding'))), 'hex'), $4)`,
		res.ID, tableOID, string(content), fmt.Sprintf("checkpoint of %s", name)); err != nil {
		return res, fmt.Errorf("authorising the checkpoint (the role needs INSERT on pgaudit_cdc.control; see setup --print-sql): %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2::text)", decode.CheckpointPrefix, string(content)); err != nil {
		return res, fmt.Errorf("writing the checkpoint to the WAL: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("committing the checkpoint: %w", err)
	}
	res.Rows, res.Digest = d.Rows, d.Hex()
	return res, nil
}

// appendRowJSON writes a row as the JSON object events carry for it.
func appendRowJSON(b []byte, cols []column, types []*decode.Type, vals []*string) []byte {
	b = append(b, '{')
	for i, c := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		b = decode.AppendString(b, []byte(c.name))
		b = append(b, ':')
		if vals[i] == nil {
			b = append(b, "null"...)
			continue
		}
		out, err := decode.AppendValue(b, types[i], []byte(*vals[i]))
		if err != nil {
			out = decode.AppendString(b, []byte(*vals[i])) // as the stream does
		}
		b = out
	}
	return append(b, '}')
}
