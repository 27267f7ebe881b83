package service

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/objwatch/callback/internal/testhelper"
)

// setup parses args with env as the whole environment.
func setup(t *testing.T, args []string, env map[string]string) (config, error) {
	t.Helper()
	var stderr strings.Builder
	c, err := parseConfig(args, testhelper.Getenv(env), &stderr)
	if err == nil {
		require.Empty(t, stderr.String(), "a valid configuration prints nothing")
	}
	return c, err
}

func TestParseConfig_defaults(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, nil)
	require.NoError(t, err)
	require.Equal(t, config{
		DatabaseURL:         "postgres://postgres@127.0.0.1:5432/callback?sslmode=disable",
		ListenAddr:          ":9090",
		ObjectsURL:          "http://localhost:9010",
		ExpireAfter:         30 * time.Second,
		FetchMinConcurrency: 128,
		FetchConcurrency:    10000,
		FetchTimeout:        5 * time.Second,
		MaxPending:          262144,
		OverloadPace:        400 * time.Millisecond,
		RetryAfterMax:       5 * time.Second,
		Lease:               15 * time.Second,
		SpoolDir:            "spool",
		ReplicaTimeout:      time.Minute,
		MaxBodyBytes:        1 << 20,
		MaxIDs:              10000,
		BodyTimeout:         time.Second,
		CallbackToken:       "",
		DBMaxConns:          16,
		CommitTimeout:       400 * time.Millisecond,
		ShutdownTimeout:     10 * time.Second,
		ShutdownDrain:       5 * time.Second,
		StatusInterval:      5 * time.Second,
		LogFormat:           "auto",
		LogLevel:            "info",
		PprofAddr:           "",
		Console:             true,
	}, got)
}

func TestParseConfig_readsEnvironment(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, map[string]string{
		"DATABASE_URL":          "postgres://u@db:5433/x",
		"LISTEN_ADDR":           "127.0.0.1:8080",
		"OBJECTS_URL":           "https://objects.example:9443",
		"EXPIRE_AFTER":          "3s",
		"FETCH_MIN_CONCURRENCY": "32",
		"FETCH_CONCURRENCY":     "64",
		"FETCH_TIMEOUT":         "2s",
		"MAX_PENDING":           "5000",
		"OVERLOAD_PACE":         "0",
		"RETRY_AFTER_MAX":       "1s",
		"LEASE":                 "4s",
		"SPOOL_DIR":             "/var/spool/cb",
		"REPLICA_TIMEOUT":       "90s",
		"MAX_BODY_BYTES":        "2048",
		"MAX_IDS":               "50",
		"BODY_TIMEOUT":          "250ms",
		"CALLBACK_TOKEN":        "s3cret",
		"DB_MAX_CONNS":          "4",
		"COMMIT_TIMEOUT":        "1s",
		"SHUTDOWN_TIMEOUT":      "3s",
		"SHUTDOWN_DRAIN":        "250ms",
		"STATUS_INTERVAL":       "0",
		"LOG_FORMAT":            "json",
		"LOG_LEVEL":             "debug",
		"PPROF_ADDR":            "127.0.0.1:6060",
		"CONSOLE":               "off",
	})
	require.NoError(t, err)
	require.Equal(t, config{
		DatabaseURL:         "postgres://u@db:5433/x",
		ListenAddr:          "127.0.0.1:8080",
		ObjectsURL:          "https://objects.example:9443",
		ExpireAfter:         3 * time.Second,
		FetchMinConcurrency: 32,
		FetchConcurrency:    64,
		FetchTimeout:        2 * time.Second,
		MaxPending:          5000,
		OverloadPace:        0,
		RetryAfterMax:       time.Second,
		Lease:               4 * time.Second,
		SpoolDir:            "/var/spool/cb",
		ReplicaTimeout:      90 * time.Second,
		MaxBodyBytes:        2048,
		MaxIDs:              50,
		BodyTimeout:         250 * time.Millisecond,
		CallbackToken:       "s3cret",
		DBMaxConns:          4,
		CommitTimeout:       time.Second,
		ShutdownTimeout:     3 * time.Second,
		ShutdownDrain:       250 * time.Millisecond,
		StatusInterval:      0,
		LogFormat:           "json",
		LogLevel:            "debug",
		PprofAddr:           "127.0.0.1:6060",
		Console:             false,
	}, got)
}

func TestParseConfig_flagOverridesEnvironment(t *testing.T) {
	t.Parallel()
	got, err := setup(t,
		[]string{"-expire-after=5s", "-fetch-concurrency", "8", "--listen-addr=:1234", "-callback-token="},
		map[string]string{"EXPIRE_AFTER": "3s", "FETCH_MIN_CONCURRENCY": "4", "FETCH_CONCURRENCY": "64", "LISTEN_ADDR": ":9999", "MAX_IDS": "7", "CALLBACK_TOKEN": "from-env"})
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, got.ExpireAfter)
	require.Equal(t, 8, got.FetchConcurrency)
	require.Equal(t, ":1234", got.ListenAddr)
	require.Equal(t, 7, got.MaxIDs, "a variable without a flag still applies")
	require.Equal(t, "", got.CallbackToken, "a flag set to empty still wins over the environment")
}

func TestParseConfig_emptyVariableMeansDefault(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, map[string]string{"EXPIRE_AFTER": "", "MAX_IDS": ""})
	require.NoError(t, err)
	require.Equal(t, 30*time.Second, got.ExpireAfter)
	require.Equal(t, 10000, got.MaxIDs)
}

func TestParseConfig_rejectsInvalidValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // all in the message
	}{
		{name: "objects_url_not_http", env: map[string]string{"OBJECTS_URL": "ftp://x"}, want: []string{"OBJECTS_URL", "http(s) URL"}},
		{name: "objects_url_without_host", env: map[string]string{"OBJECTS_URL": "http://"}, want: []string{"OBJECTS_URL"}},
		{name: "objects_url_unparsable", env: map[string]string{"OBJECTS_URL": "http://[::1"}, want: []string{"OBJECTS_URL"}},
		{name: "expire_after_not_a_duration", env: map[string]string{"EXPIRE_AFTER": "30"}, want: []string{"EXPIRE_AFTER", `"30"`}},
		{name: "expire_after_zero", env: map[string]string{"EXPIRE_AFTER": "0s"}, want: []string{"EXPIRE_AFTER", "positive"}},
		{name: "expire_after_negative", env: map[string]string{"EXPIRE_AFTER": "-1s"}, want: []string{"EXPIRE_AFTER", "positive"}},
		{name: "fetch_concurrency_below_its_floor", env: map[string]string{"FETCH_MIN_CONCURRENCY": "200", "FETCH_CONCURRENCY": "100"}, want: []string{"FETCH_CONCURRENCY", "floor"}},
		{name: "fetch_min_concurrency_zero", env: map[string]string{"FETCH_MIN_CONCURRENCY": "0"}, want: []string{"FETCH_MIN_CONCURRENCY", "at least 1"}},
		{name: "fetch_concurrency_zero", env: map[string]string{"FETCH_CONCURRENCY": "0"}, want: []string{"FETCH_CONCURRENCY", "at least 1"}},
		{name: "fetch_concurrency_not_a_number", env: map[string]string{"FETCH_CONCURRENCY": "many"}, want: []string{"FETCH_CONCURRENCY"}},
		{name: "fetch_timeout_zero", env: map[string]string{"FETCH_TIMEOUT": "0"}, want: []string{"FETCH_TIMEOUT"}},
		{name: "lease_not_a_duration", env: map[string]string{"LEASE": "long"}, want: []string{"LEASE"}},
		{name: "max_body_bytes_zero", env: map[string]string{"MAX_BODY_BYTES": "0"}, want: []string{"MAX_BODY_BYTES"}},
		{name: "max_body_bytes_with_unit", env: map[string]string{"MAX_BODY_BYTES": "1MiB"}, want: []string{"MAX_BODY_BYTES"}},
		{name: "max_ids_negative", env: map[string]string{"MAX_IDS": "-5"}, want: []string{"MAX_IDS"}},
		{name: "body_timeout_without_unit", env: map[string]string{"BODY_TIMEOUT": "1"}, want: []string{"BODY_TIMEOUT"}},
		{name: "db_max_conns_zero", env: map[string]string{"DB_MAX_CONNS": "0"}, want: []string{"DB_MAX_CONNS"}},
		{name: "commit_timeout_negative", env: map[string]string{"COMMIT_TIMEOUT": "-400ms"}, want: []string{"COMMIT_TIMEOUT"}},
		{name: "shutdown_timeout_zero", env: map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, want: []string{"SHUTDOWN_TIMEOUT"}},
		{name: "shutdown_drain_negative", env: map[string]string{"SHUTDOWN_DRAIN": "-1s"}, want: []string{"SHUTDOWN_DRAIN", "negative"}},
		{name: "status_interval_negative", env: map[string]string{"STATUS_INTERVAL": "-5s"}, want: []string{"STATUS_INTERVAL", "negative"}},
		{name: "log_format_unknown", env: map[string]string{"LOG_FORMAT": "xml"}, want: []string{"LOG_FORMAT", "xml"}},
		{name: "log_level_unknown", env: map[string]string{"LOG_LEVEL": "verbose"}, want: []string{"LOG_LEVEL", "verbose"}},
		{name: "console_neither_on_nor_off", env: map[string]string{"CONSOLE": "false"}, want: []string{"CONSOLE", "on or off"}},
		{name: "invalid_flag_names_variable_and_flag", args: []string{"-max-ids=none"}, want: []string{"MAX_IDS", "-max-ids"}},
		{name: "invalid_flag_wins_over_valid_env", args: []string{"-expire-after=0s"}, env: map[string]string{"EXPIRE_AFTER": "5s"}, want: []string{"EXPIRE_AFTER", "-expire-after"}},
		{name: "lease_equal_to_fetch_timeout", env: map[string]string{"LEASE": "5s", "FETCH_TIMEOUT": "5s"}, want: []string{"LEASE", "FETCH_TIMEOUT"}},
		{name: "lease_shorter_than_fetch_timeout", env: map[string]string{"FETCH_TIMEOUT": "20s"}, want: []string{"LEASE", "FETCH_TIMEOUT"}},
		{name: "lease_less_than_a_second_over_fetch_timeout", env: map[string]string{"LEASE": "5500ms"}, want: []string{"LEASE", "FETCH_TIMEOUT"}},
		{name: "unknown_flag", args: []string{"-no-such-flag"}, want: []string{"no-such-flag"}},
		// Below a few claims' worth, every pass would evict every waiting row.
		{name: "max_pending_too_small", env: map[string]string{"MAX_PENDING": "100"}, want: []string{"MAX_PENDING", "at least 1024"}},
		{name: "replica_timeout_under_three_heartbeats", env: map[string]string{"REPLICA_TIMEOUT": "2s"}, want: []string{"REPLICA_TIMEOUT", "three heartbeats"}},
		{name: "retry_after_max_over_half_the_window", env: map[string]string{"RETRY_AFTER_MAX": "20s"}, want: []string{"RETRY_AFTER_MAX", "half the window"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseConfig(tt.args, testhelper.Getenv(tt.env), io.Discard)
			require.Error(t, err)
			for _, w := range tt.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
}

func TestParseConfig_fetchConcurrencyBelowTheDefaultFloorIsAFixedLimit(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, map[string]string{"FETCH_CONCURRENCY": "64"})
	require.NoError(t, err)
	require.Equal(t, 64, got.FetchMinConcurrency)
	require.Equal(t, 64, got.FetchConcurrency)
}

func TestParseConfig_retryAfterMaxUnsetStaysWithinHalfAShortWindow(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, map[string]string{"EXPIRE_AFTER": "4s"})
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, got.RetryAfterMax)
}

func TestParseConfig_leaseJustOverFetchTimeoutIsValid(t *testing.T) {
	t.Parallel()
	got, err := setup(t, nil, map[string]string{"FETCH_TIMEOUT": "2s", "LEASE": "3s"})
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, got.Lease)
}

func TestParseConfig_helpShowsKindsAndDefaults(t *testing.T) {
	t.Parallel()
	var stderr strings.Builder
	_, err := parseConfig([]string{"-h"}, testhelper.Getenv(nil), &stderr)
	require.ErrorIs(t, err, flag.ErrHelp, "main exits 0 on it")
	require.Contains(t, stderr.String(), "-expire-after duration")
	require.Contains(t, stderr.String(), "-max-ids int")
	require.Contains(t, stderr.String(), `env SHUTDOWN_DRAIN, default "5s"`)
}

// TestParseConfig_READMETableMatchesSettings: the README's configuration table lists
// every setting parseConfig reads, once, with the default -h prints (durations compared
// by value: 60s is 1m0s), and nothing else. A setting added, renamed or given another
// default fails here until the table says so.
func TestParseConfig_READMETableMatchesSettings(t *testing.T) {
	t.Parallel()
	var help strings.Builder
	_, err := parseConfig([]string{"-h"}, testhelper.Getenv(nil), &help)
	require.ErrorIs(t, err, flag.ErrHelp)
	want := map[string]string{}
	for _, m := range regexp.MustCompile(`env ([A-Z_]+), default "([^"]*)"\)`).FindAllStringSubmatch(help.String(), -1) {
		want[m[1]] = m[2]
	}
	require.NotEmpty(t, want, "no settings read from -h:\n%s", help.String())

	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	// A row: | `NAME` | `default` | meaning |, or (empty) for an empty default.
	got := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Z_]+)` \\| (?:`([^`]*)`|\\(empty\\)) \\|").FindAllStringSubmatch(string(readme), -1) {
		_, twice := got[m[1]]
		require.False(t, twice, "the README lists %s twice", m[1])
		got[m[1]] = m[2]
	}

	for env, def := range want {
		readmeDef, ok := got[env]
		if !assert.True(t, ok, "the README's configuration table lacks %s (default %q)", env, def) {
			continue
		}
		d1, err1 := time.ParseDuration(def)
		d2, err2 := time.ParseDuration(readmeDef)
		if err1 == nil && err2 == nil {
			assert.Equal(t, d1, d2, "%s: the README says %q, the service %q", env, readmeDef, def)
		} else {
			assert.Equal(t, def, readmeDef, "%s: the README's default", env)
		}
	}
	for env := range got {
		_, ok := want[env]
		assert.True(t, ok, "the README lists %s, which the service does not read", env)
	}
}
