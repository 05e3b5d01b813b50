package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
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

// TestFastLoopStartsNoPostgres: make test-unit (-short) runs every test
// that needs no PostgreSQL and none that does. Tests reach PostgreSQL
// through internal/pgtest, whose Needed leaves them out under -short; a
// test function that starts a server of its own (embedded.Start...) or
// looks for the server's binaries must say so the same way.
func TestFastLoopStartsNoPostgres(t *testing.T) {
	starts := regexp.MustCompile(`embedded\.Start|findBinDirDefault\(|bench\.Run\(|\bRun\(ctx, Options\{`)
	marked := regexp.MustCompile(`pgtest\.|needsBinaries\(`)
	files, err := filepath.Glob("*/*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("*/*/*_test.go")
	files = append(files, more...)
	checked := 0
	for _, file := range files {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			body := string(src[fset.Position(fn.Body.Pos()).Offset:fset.Position(fn.Body.End()).Offset])
			if !starts.MatchString(body) || strings.HasPrefix(file, "internal/pgtest/") {
				continue
			}
			checked++
			if !marked.MatchString(body) {
				t.Errorf("%s: %s starts PostgreSQL (or needs its binaries) without pgtest.Needed (needsBinaries in embedded): make test-unit (-short) would run it", file, fn.Name.Name)
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d functions start PostgreSQL: the check no longer finds them", checked)
	}
}
