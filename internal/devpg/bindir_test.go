package devpg

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestCandidateBinDirs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		pgConfig   string
		debian     []string
		pathInitdb string
		want       []string
	}{
		{
			name:   "nothing_installed",
			debian: nil,
			want:   nil,
		},
		{
			name:       "pg_config_first_then_debian_newest_first_then_path",
			pgConfig:   "/opt/pg/bin",
			debian:     []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"},
			pathInitdb: "/usr/local/pgsql/bin/initdb",
			want: []string{
				"/opt/pg/bin",
				"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/9.6/bin",
				"/usr/local/pgsql/bin",
			},
		},
		{
			name:       "duplicates_dropped_keeping_the_first_place",
			pgConfig:   "/usr/lib/postgresql/15/bin/",
			debian:     []string{"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/17/bin"},
			pathInitdb: "/usr/lib/postgresql/17/bin/initdb",
			want:       []string{"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/17/bin"},
		},
		{
			name:       "only_path",
			pathInitdb: "/usr/bin/initdb",
			want:       []string{"/usr/bin"},
		},
		{
			name:   "non_numeric_version_sorts_last",
			debian: []string{"/usr/lib/postgresql/devel/bin", "/usr/lib/postgresql/14/bin"},
			want:   []string{"/usr/lib/postgresql/14/bin", "/usr/lib/postgresql/devel/bin"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := candidateBinDirs(tc.pgConfig, tc.debian, tc.pathInitdb)
			if !slices.Equal(got, tc.want) {
				t.Errorf("candidateBinDirs() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	installed := func(paths ...string) func(string) bool {
		return func(p string) bool { return slices.Contains(paths, p) }
	}
	tests := []struct {
		name       string
		candidates []string
		exec       func(string) bool
		version    string // of the data directory: "" for none
		want       string
		wantErr    error
	}{
		{
			name:       "skips_a_client_only_dir",
			candidates: []string{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"},
			exec: installed("/usr/lib/postgresql/16/bin/pg_ctl",
				"/usr/lib/postgresql/15/bin/initdb", "/usr/lib/postgresql/15/bin/pg_ctl", "/usr/lib/postgresql/15/bin/postgres"),
			want: "/usr/lib/postgresql/15/bin",
		},
		{
			name:       "first_complete_dir_wins",
			candidates: []string{"/a", "/b"},
			exec:       installed("/a/initdb", "/a/pg_ctl", "/a/postgres", "/b/initdb", "/b/pg_ctl", "/b/postgres"),
			want:       "/a",
		},
		{
			name:       "an_existing_cluster_takes_its_own_major_version",
			candidates: []string{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"},
			exec: installed("/usr/lib/postgresql/16/bin/initdb", "/usr/lib/postgresql/16/bin/pg_ctl", "/usr/lib/postgresql/16/bin/postgres",
				"/usr/lib/postgresql/15/bin/initdb", "/usr/lib/postgresql/15/bin/pg_ctl", "/usr/lib/postgresql/15/bin/postgres"),
			version: "15",
			want:    "/usr/lib/postgresql/15/bin",
		},
		{
			name:       "an_existing_cluster_of_a_version_not_installed",
			candidates: []string{"/usr/lib/postgresql/16/bin"},
			exec:       installed("/usr/lib/postgresql/16/bin/initdb", "/usr/lib/postgresql/16/bin/pg_ctl", "/usr/lib/postgresql/16/bin/postgres"),
			version:    "15",
			wantErr:    ErrWrongVersion,
		},
		{
			name:       "none_found_says_how_to_install",
			candidates: []string{"/a"},
			exec:       installed("/a/initdb"),
			wantErr:    ErrNoBinaries,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := findBinDir(tc.candidates, tc.exec, tc.version, versionOf)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Errorf("findBinDir() = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	for _, hint := range []string{"apt-get install postgresql-15", "docker compose up"} {
		if !strings.Contains(ErrNoBinaries.Error(), hint) {
			t.Errorf("ErrNoBinaries does not mention %q", hint)
		}
	}
}

// versionOf reads the version from a Debian-style path, standing in for postgres --version.
func versionOf(dir string) string { return debianVersion(dir) }

func TestMajorVersion(t *testing.T) {
	t.Parallel()
	for out, want := range map[string]string{
		"postgres (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)\n": "15",
		"postgres (PostgreSQL) 9.6.24\n":                         "9.6",
		"postgres (PostgreSQL) 17beta1\n":                        "17",
		"postgres (PostgreSQL) 16.4":                             "16",
		"something else":                                         "",
	} {
		if got := majorVersion(out); got != want {
			t.Errorf("majorVersion(%q) = %q, want %q", out, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
	}{
		{"15", "15", 0},
		{"9.6", "15", -1},
		{"16", "15", 1},
		{"16.1", "16", 1},
		{"devel", "9", -1},
	}
	for _, tc := range tests {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
