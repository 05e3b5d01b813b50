package migrations

import "testing"

func TestMigrationsAreOrderedAndUnique(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 4 {
		t.Fatalf("got %d migrations, want at least 4", len(all))
	}
	for i, m := range all {
		if m.Version != i+1 {
			t.Errorf("migration %d is %s (version %d): versions must run 1, 2, 3… without gaps", i, m.Name, m.Version)
		}
		if m.SQL == "" {
			t.Errorf("migration %s is empty", m.Name)
		}
	}
}
