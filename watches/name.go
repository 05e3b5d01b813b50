package watches

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
)

// RegistryLockKey is the transaction-level advisory lock that Watch and
// Unwatch hold exclusively while they change the registry. A transaction
// that must not interleave with them (a backfill chunk, which must see
// whether its table is still watched) takes it shared, before any other lock.
const RegistryLockKey = lockKey

// ErrOwnTable is wrapped when asked to watch pgaudit-cdc's own tables.
var ErrOwnTable = errors.New("pgaudit-cdc's own tables cannot be watched")

// CheckWatchable refuses the tables of pgaudit-cdc's own schema: changes to
// the watch registry are audited by its self-audit events already, and the
// other tables (progress, dead letters) are its bookkeeping, which a watch
// would feed back into the stream it keeps.
func CheckWatchable(t TableName) error {
	if t.Schema != migrations.Schema {
		return nil
	}
	return fmt.Errorf("%w: %s is in schema %s, whose changes pgaudit-cdc's self-audit events (WATCH, UNWATCH) record already; watch your application's tables instead",
		ErrOwnTable, ident.Qualified(t.Schema, t.Name), migrations.Schema)
}

// CheckWatchableSchema refuses a schema-wide watch of pgaudit-cdc's own
// schema, for the reasons of CheckWatchable. schema is as PostgreSQL stores
// it (no case folding).
func CheckWatchableSchema(schema string) error {
	if schema != migrations.Schema {
		return nil
	}
	return fmt.Errorf("%w: schema %s holds them, and pgaudit-cdc's self-audit events (WATCH, UNWATCH) record their changes already; watch your application's schemas instead",
		ErrOwnTable, migrations.Schema)
}

// TableName is a schema-qualified table name as PostgreSQL stores it (case
// folded, quotes removed).
type TableName struct {
	Schema string
	Name   string
}

// ParseTableName parses what a user types: `decisions` (schema public, as the
// trigger-based predecessor implied), `billing.invoices`, or quoted parts like
// `"Mixed Case"."odd ""name"""`. Unquoted parts fold to lower case, as in SQL.
func ParseTableName(s string) (TableName, error) {
	parts, err := splitIdentifiers(strings.TrimSpace(s))
	if err != nil {
		return TableName{}, fmt.Errorf("invalid table name %q: %w", s, err)
	}
	switch len(parts) {
	case 1:
		return TableName{Schema: "public", Name: parts[0]}, nil
	case 2:
		return TableName{Schema: parts[0], Name: parts[1]}, nil
	default:
		return TableName{}, fmt.Errorf("invalid table name %q: want table or schema.table", s)
	}
}

func splitIdentifiers(s string) ([]string, error) {
	var parts []string
	i := 0
	for {
		if i >= len(s) {
			return nil, fmt.Errorf("empty name")
		}
		var part string
		if s[i] == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted identifier")
			}
			part = b.String()
			if part == "" {
				return nil, fmt.Errorf("zero-length quoted identifier")
			}
		} else {
			start := i
			for i < len(s) && s[i] != '.' {
				if s[i] == '"' || s[i] == ' ' {
					return nil, fmt.Errorf("unexpected %q in an unquoted name: quote names with spaces or quotes", s[i])
				}
				i++
			}
			part = foldASCII(s[start:i])
			if part == "" {
				return nil, fmt.Errorf("empty name")
			}
		}
		parts = append(parts, part)
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("unexpected %q after a quoted name", s[i])
		}
		i++
	}
}

// foldASCII lower-cases A-Z only, as PostgreSQL folds unquoted identifiers in
// multi-byte encodings.
func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
