package metrics

import (
	"runtime"
	"runtime/debug"
)

// Build says which build runs: for callback_build_info and `callback -version`.
type Build struct {
	Version   string // the module version, "(devel)" for a build from a work tree
	Revision  string // the VCS commit, with "-dirty" if the tree had changes; "unknown" without VCS data
	GoVersion string
}

// version and revision may be set with -ldflags "-X ..." where the build has no VCS
// data (the Dockerfile leaves .git out of its context); they win over the build info.
var (
	version  string
	revision string
)

// ReadBuild reads the module's build information.
func ReadBuild() Build {
	b := Build{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			b.Version = v
		}
		var dirty bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && b.Revision != "unknown" {
			b.Revision += "-dirty"
		}
	}
	if version != "" {
		b.Version = version
	}
	if revision != "" {
		b.Revision = revision
	}
	return b
}
