package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// makeVar returns the value of a Makefile variable (one line, ":=").
func makeVar(t *testing.T, makefile, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` := (.*)$`).FindStringSubmatch(makefile)
	if m == nil {
		t.Fatalf("Makefile: no %s", name)
	}
	return strings.TrimSpace(m[1])
}

// TestMatrixListNamesTests: every name in the Makefile's version matrix
// patterns matches a test of the matrix packages, so that a renamed or
// removed test cannot silently drop out of the matrix.
func TestMatrixListNamesTests(t *testing.T) {
	raw, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	mk := string(raw)
	run := makeVar(t, mk, "MATRIX_RUN")
	run = strings.TrimPrefix(run, "^Test(")
	names := strings.Split(run, "|")
	for _, extra := range []string{"MATRIX_RUN_14", "MATRIX_RUN_15"} {
		names = append(names, strings.Split(strings.TrimPrefix(makeVar(t, mk, extra), "|"), "|")...)
	}
	var tests []string
	decl := regexp.MustCompile(`(?m)^func (Test\w+)\(t \*testing\.T\)`)
	for _, pkg := range strings.Fields(makeVar(t, mk, "MATRIX_PKGS")) {
		files, err := filepath.Glob(filepath.Join(pkg, "*_test.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
				tests = append(tests, m[1])
			}
		}
	}
	for _, name := range names {
		re := regexp.MustCompile(`^Test` + name + `$`)
		if !slices.ContainsFunc(tests, re.MatchString) {
			t.Errorf("MATRIX_RUN names %q, which matches no test of the matrix packages", name)
		}
	}
}

// TestUnitPackages: the fast loop (make test-unit) covers every package
// whose tests need no PostgreSQL, and none that does.
func TestUnitPackages(t *testing.T) {
	raw, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]bool{}
	for _, p := range strings.Fields(strings.ReplaceAll(makeVar(t, string(raw), "UNIT_PKGS"), `\`, "")) {
		unit[filepath.Clean(p)] = true
	}
	// The continuation lines of UNIT_PKGS.
	m := regexp.MustCompile(`(?s)UNIT_PKGS := (.*?)\n\S`).FindStringSubmatch(string(raw))
	for _, p := range strings.Fields(strings.ReplaceAll(m[1], `\`, "")) {
		unit[filepath.Clean(p)] = true
	}
	out, err := exec.Command("go", "list", "-f", `{{.Dir}}|{{join .TestImports " "}} {{join .XTestImports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		dir, imports, _ := strings.Cut(line, "|")
		rel, err := filepath.Rel(wd, dir)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(imports) == "" {
			continue // no tests
		}
		needsPG := strings.Contains(imports, "internal/pgtest") || strings.Contains(imports, "pgaudit-cdc/embedded") ||
			rel == "cmd/bench" || rel == "embedded"
		switch {
		case needsPG && unit[rel]:
			t.Errorf("UNIT_PKGS lists ./%s, whose tests start PostgreSQL", rel)
		case !needsPG && !unit[rel]:
			t.Errorf("./%s has tests that need no PostgreSQL: add it to UNIT_PKGS", rel)
		}
	}
}
