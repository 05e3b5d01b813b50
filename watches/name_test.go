package watches

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTableName(t *testing.T) {
	tests := []struct {
		in           string
		schema, name string
		err          string
	}{
		{"decisions", "public", "decisions", ""},
		{"Decisions", "public", "decisions", ""},
		{"billing.invoices", "billing", "invoices", ""},
		{"Billing.Invoices", "billing", "invoices", ""},
		{`"Mixed Case"."odd ""name"""`, "Mixed Case", `odd "name"`, ""},
		{`"a.b"`, "public", "a.b", ""},
		{`public."Robert'); DROP TABLE students;--"`, "public", "Robert'); DROP TABLE students;--", ""},
		{"ÄBC.ünï", "Äbc", "ünï", ""}, // only ASCII folds, as in PostgreSQL with UTF-8
		{"  spaced  ", "public", "spaced", ""},
		{"", "", "", "empty name"},
		{"a.", "", "", "empty name"},
		{".a", "", "", "empty name"},
		{"a.b.c", "", "", "want table or schema.table"},
		{`"unterminated`, "", "", "unterminated"},
		{`""`, "", "", "zero-length"},
		{`"a"b`, "", "", "after a quoted name"},
		{"two words", "", "", "quote names with spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTableName(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %+v, %v; want an error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got.Schema != tt.schema || got.Name != tt.name {
				t.Fatalf("got %+v, %v; want %s.%s", got, err, tt.schema, tt.name)
			}
		})
	}
}

func TestCheckWatchable(t *testing.T) {
	for _, in := range []string{"pgaudit_cdc.watches", "PGAUDIT_CDC.backfills", `"pgaudit_cdc"."dead_letters"`, "pgaudit_cdc.nonexistent"} {
		tn, err := ParseTableName(in)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckWatchable(tn); !errors.Is(err, ErrOwnTable) || !strings.Contains(err.Error(), "self-audit") {
			t.Errorf("CheckWatchable(%s): got %v, want ErrOwnTable explaining the self-audit", in, err)
		}
	}
	for _, in := range []string{"decisions", "public.watches", `"PGAUDIT_CDC".watches`, `"pgaudit_cdc ".watches`, `"pgaudit_cdc.watches"`} {
		tn, err := ParseTableName(in)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckWatchable(tn); err != nil {
			t.Errorf("CheckWatchable(%s): got %v, want nil", in, err)
		}
	}
	if err := CheckWatchableSchema("pgaudit_cdc"); !errors.Is(err, ErrOwnTable) {
		t.Errorf("CheckWatchableSchema(pgaudit_cdc): got %v, want ErrOwnTable", err)
	}
	for _, s := range []string{"billing", "PGAUDIT_CDC", "public"} {
		if err := CheckWatchableSchema(s); err != nil {
			t.Errorf("CheckWatchableSchema(%s): got %v, want nil", s, err)
		}
	}
}
