package embedded

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestRequestedVersion(t *testing.T) {
	for raw, want := range map[string]int{"": 0, "14": 14, " 18 ": 18} {
		t.Setenv(EnvVersion, raw)
		if got, err := RequestedVersion(); err != nil || got != want {
			t.Errorf("%s=%q: got %d, %v; want %d", EnvVersion, raw, got, err, want)
		}
	}
	for _, raw := range []string{"16.2", "sixteen", "9", "100"} {
		t.Setenv(EnvVersion, raw)
		if _, err := RequestedVersion(); err == nil {
			t.Errorf("%s=%q: got no error", EnvVersion, raw)
		}
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv(EnvCache, "/some/where")
	if got := CacheDir(); got != "/some/where" {
		t.Errorf("CacheDir with %s set: got %q", EnvCache, got)
	}
}

// A requested version that is not installed is an error naming the way to
// install it, never a fallback to another version.
func TestBinDirForMissingVersionFails(t *testing.T) {
	t.Setenv(EnvCache, t.TempDir())
	t.Setenv(EnvBinDirs, "")
	t.Setenv(EnvVersion, "99")
	dir, err := findBinDir()
	if err == nil || !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("PostgreSQL 99: got %q, %v; want ErrNoBinaries", dir, err)
	}
	for _, want := range []string{"PostgreSQL 99", "make pg-versions", EnvVersion} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// needsBinaries leaves a test that runs PostgreSQL's binaries out of the
// fast loop (-short), as internal/pgtest.Needed does for the others (which
// this package cannot import: pgtest imports it).
func needsBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs PostgreSQL's binaries, which the fast loop (-short) does not: make test-full runs it")
	}
}

// PGAUDIT_PG_BINDIRS is tried first, and a directory holding another
// version than the one requested is refused.
func TestBinDirForChecksTheVersion(t *testing.T) {
	needsBinaries(t)
	dir, err := findBinDirDefault()
	if err != nil {
		t.Fatalf("no PostgreSQL installed: %v", err)
	}
	major, full, err := ServerVersion(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvCache, t.TempDir())
	other := major + 50
	t.Setenv(EnvBinDirs, "1=/nowhere, "+itoa(other)+"="+dir)
	if _, err := BinDirFor(other); err == nil || !strings.Contains(err.Error(), "holds PostgreSQL "+full) {
		t.Errorf("a bin dir of %s given for %d: got %v, want it refused", full, other, err)
	}
	t.Setenv(EnvBinDirs, itoa(major)+"="+dir)
	if got, err := BinDirFor(major); err != nil || got != dir {
		t.Errorf("BinDirFor(%d) with %s=%d=%s: got %q, %v", major, EnvBinDirs, major, dir, got, err)
	}
}

// The npm layout under the cache is found by version.
func TestBinDirForNPMCache(t *testing.T) {
	needsBinaries(t)
	dir, err := findBinDirDefault()
	if err != nil {
		t.Fatalf("no PostgreSQL installed: %v", err)
	}
	major, _, err := ServerVersion(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/usr/lib/postgresql", itoa(major), "bin")); err == nil {
		// Debian's directory comes before the cache: nothing to show here
		// with this version; use a version Debian does not have.
		major += 50
	}
	cache := t.TempDir()
	bin := filepath.Join(cache, "pg"+itoa(major), npmBinDir)
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in postgres that reports the version asked for.
	script := "#!/bin/sh\necho 'postgres (PostgreSQL) " + itoa(major) + ".3'\n"
	for _, p := range []string{"initdb", "pg_ctl", "postgres"} {
		if err := os.WriteFile(filepath.Join(bin, p), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(EnvCache, cache)
	t.Setenv(EnvBinDirs, "")
	if got, err := BinDirFor(major); err != nil || got != bin {
		t.Errorf("BinDirFor(%d): got %q, %v; want %s", major, got, err, bin)
	}
}

// findBinDirDefault finds a server the way findBinDir does without
// PGAUDIT_PG_VERSION.
func findBinDirDefault() (string, error) {
	old, had := os.LookupEnv(EnvVersion)
	os.Unsetenv(EnvVersion)
	defer func() {
		if had {
			os.Setenv(EnvVersion, old)
		}
	}()
	return findBinDir()
}

func itoa(n int) string { return strconv.Itoa(n) }
