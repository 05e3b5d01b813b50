// Package version holds build information, set with -ldflags at release time.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version and Commit are set with -ldflags "-X ...". When unset, the module
// build info fills them in.
var (
	Version = ""
	Commit  = ""
)

// Info returns the version, commit and Go version of this binary.
func Info() (version, commit, goVersion string) {
	version, commit = Version, Commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if version == "" && bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && commit == "" {
				commit = s.Value
				if len(commit) > 12 {
					commit = commit[:12]
				}
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	if commit == "" {
		commit = "unknown"
	}
	return version, commit, runtime.Version()
}
