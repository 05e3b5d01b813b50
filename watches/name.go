package watches

import (
	"fmt"
	"strings"
)

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
