package devpg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// serverBinaries must all sit in one directory for it to count as a server install.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// ErrNoBinaries is returned when no PostgreSQL server installation is found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found " +
	"and no server answers: install PostgreSQL (Debian: apt-get install postgresql-15), " +
	"start one yourself and set DATABASE_URL, or use `docker compose up`")

// candidateBinDirs orders the places to look for server binaries: what pg_config says
// first (it names the installation the user chose), then Debian's versioned
// directories newest first, then wherever PATH finds initdb. Empty entries and
// duplicates are dropped.
func candidateBinDirs(pgConfigBindir string, debianDirs []string, pathInitdb string) []string {
	debian := slices.Clone(debianDirs)
	slices.SortStableFunc(debian, func(a, b string) int {
		return compareVersions(debianVersion(b), debianVersion(a)) // newest first
	})
	var out []string
	add := func(dir string) {
		if dir == "" {
			return
		}
		dir = filepath.Clean(dir)
		if !slices.Contains(out, dir) {
			out = append(out, dir)
		}
	}
	add(pgConfigBindir)
	for _, d := range debian {
		add(d)
	}
	if pathInitdb != "" {
		add(filepath.Dir(pathInitdb))
	}
	return out
}

// debianVersion pulls "15" out of /usr/lib/postgresql/15/bin.
func debianVersion(binDir string) string {
	return filepath.Base(filepath.Dir(binDir))
}

// compareVersions compares dotted numeric versions ("9.6" < "15" < "16.1"); a
// component that is not a number sorts before any number.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		x, y := -1, -1
		if i < len(as) {
			if n, err := strconv.Atoi(as[i]); err == nil {
				x = n
			}
		}
		if i < len(bs) {
			if n, err := strconv.Atoi(bs[i]); err == nil {
				y = n
			}
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// findBinDir returns the first candidate directory that holds all server binaries and
// whose server is of major version want ("" takes any). version tells a directory's.
func findBinDir(candidates []string, isExecutable func(path string) bool, want string, version func(dir string) string) (string, error) {
	var others []string
	for _, dir := range candidates {
		ok := true
		for _, bin := range serverBinaries {
			if !isExecutable(filepath.Join(dir, bin)) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if want == "" {
			return dir, nil
		}
		v := version(dir)
		if v == want {
			return dir, nil
		}
		others = append(others, fmt.Sprintf("%s in %s", cmp.Or(v, "an unknown version"), dir))
	}
	if len(others) > 0 {
		return "", fmt.Errorf("%w: the data directory was made by PostgreSQL %s, and only %s is installed",
			ErrWrongVersion, want, strings.Join(others, ", "))
	}
	return "", ErrNoBinaries
}

// ErrWrongVersion: a data directory can only be started by its own major version.
var ErrWrongVersion = errors.New("no PostgreSQL server of the data directory's version")

// DiscoverBinDir looks on this machine for server binaries of major version want ("":
// any).
func DiscoverBinDir(ctx context.Context, want string) (string, error) {
	var pgConfigDir string
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		pgConfigDir = strings.TrimSpace(string(out))
	}
	debianDirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var pathInitdb string
	if p, err := exec.LookPath("initdb"); err == nil {
		// /usr/local/bin/initdb may be a symlink into the real installation, and
		// pg_ctl finds postgres next to itself only after resolving links.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		pathInitdb = p
	}
	version := func(dir string) string {
		out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
		if err != nil {
			return ""
		}
		return majorVersion(string(out))
	}
	return findBinDir(candidateBinDirs(pgConfigDir, debianDirs, pathInitdb), isExecutable, want, version)
}

// majorVersion reads the major version, as PG_VERSION spells it, from the output of
// postgres --version: "postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)" is "15",
// "postgres (PostgreSQL) 9.6.24" is "9.6".
func majorVersion(out string) string {
	_, rest, ok := strings.Cut(out, "(PostgreSQL) ")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
	parts := strings.Split(v, ".")
	if parts[0] == "9" && len(parts) > 1 {
		return parts[0] + "." + parts[1]
	}
	if n := strings.IndexFunc(parts[0], func(r rune) bool { return r < '0' || r > '9' }); n >= 0 {
		return parts[0][:n] // "17beta1" -> "17"
	}
	return parts[0]
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
