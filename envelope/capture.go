package envelope

import (
	"encoding/json"
	"fmt"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
)

// WatchEntry is a watch as a self-audit event shows it (payload.watch and
// payload.previous): the registry row as it was set.
type WatchEntry struct {
	Table          string   `json:"table,omitempty"`
	Schema         string   `json:"schema,omitempty"` // a schema-wide watch
	Kind           string   `json:"kind"`
	Source         string   `json:"source"`
	Active         bool     `json:"active"`
	RowFilter      *string  `json:"row_filter,omitempty"`
	Columns        []string `json:"columns,omitempty"`
	ExcludeColumns []string `json:"exclude_columns,omitempty"`
	OnColumns      []string `json:"on_columns,omitempty"`
	DroppedAt      string   `json:"dropped_at,omitempty"`
	// Origin says how a watch that no operator made came to be: a
	// detached partition's (detached_from), a table's that took a watched
	// name (took_name_from), an inheritance child's (inherits_from).
	Origin json.RawMessage `json:"origin,omitempty"`
}

// SetSelfAudit gives e the payload of a self-audit event (OpWatch,
// OpUnwatch, OpRewatch, OpDrop): who changed the watch (changed_by), and
// the watch before (previous) and after (watch); nil leaves one out.
func (e *Event) SetSelfAudit(changedBy string, previous, watch *WatchEntry) error {
	e.Fields = []Field{{Name: "changed_by", Value: pgjson.AppendText(nil, changedBy)}}
	for _, m := range []struct {
		name  string
		entry *WatchEntry
	}{{"previous", previous}, {"watch", watch}} {
		if m.entry == nil {
			continue
		}
		js, err := Canonical(m.entry)
		if err != nil {
			return fmt.Errorf("encoding the %s watch: %w", m.name, err)
		}
		e.Fields = append(e.Fields, Field{Name: m.name, Value: js})
	}
	return nil
}

// Checkpoint is payload.checkpoint of a CHECKPOINT event: one chunk of a
// table's rows, counted and hashed in the database's snapshot, for a
// verifier to compare with the trail's fold of the table.
type Checkpoint struct {
	ID         int64    `json:"id"`
	Rows       int64    `json:"rows"`
	Digest     string   `json:"digest"`
	KeyColumns []string `json:"key_columns"` // never null
	Columns    []string `json:"columns"`     // never null
	// Chunk numbers a chunked checkpoint's chunks from 1, Last marks the
	// final one; both absent for a checkpoint of one snapshot (Chunk 0).
	Chunk int64 `json:"chunk,omitempty"`
	Last  *bool `json:"last,omitempty"`
	// The totals, on the last chunk only.
	TotalRows   *int64  `json:"total_rows,omitempty"`
	TotalDigest *string `json:"total_digest,omitempty"`
	// Pairs lists the chunk's rows by key (base64); absent for a table
	// without a primary key.
	Pairs *string `json:"pairs,omitempty"`
}

// SetCheckpoint gives e the payload of a CHECKPOINT event.
func (e *Event) SetCheckpoint(cp Checkpoint) error {
	if cp.KeyColumns == nil {
		cp.KeyColumns = []string{}
	}
	if cp.Columns == nil {
		cp.Columns = []string{}
	}
	js, err := Canonical(cp)
	if err != nil {
		return fmt.Errorf("encoding a checkpoint: %w", err)
	}
	e.Fields = []Field{{Name: "checkpoint", Value: js}}
	return nil
}
