package service

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/objwatch/callback/internal/fetch"
	"github.com/objwatch/callback/internal/inbox"
	"github.com/objwatch/callback/internal/merge"
	"github.com/objwatch/callback/internal/pace"
	"github.com/objwatch/callback/internal/watermark"
)

// config is everything the service reads from its environment, with the matching
// flags: a flag wins over its variable. Each field's default is the documented one.
type config struct {
	DatabaseURL         string
	ListenAddr          string
	ObjectsURL          string
	ExpireAfter         time.Duration
	FetchMinConcurrency int
	FetchConcurrency    int
	FetchTimeout        time.Duration
	MaxPending          int
	OverloadPace        time.Duration
	RetryAfterMax       time.Duration
	Lease               time.Duration
	SpoolDir            string
	ReplicaTimeout      time.Duration
	MaxBodyBytes        int64
	MaxIDs              int
	BodyTimeout         time.Duration
	CallbackToken       string
	DBMaxConns          int
	CommitTimeout       time.Duration
	ShutdownTimeout     time.Duration
	ShutdownDrain       time.Duration
	StatusInterval      time.Duration
	LogFormat           string
	LogLevel            string
	PprofAddr           string
	Console             bool
}

type setting struct {
	env, flag, def, help string
	parse                func(string) error
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	settings := []setting{
		{"DATABASE_URL", "database-url", "postgres://postgres@127.0.0.1:5432/callback?sslmode=disable", "Postgres URL; the database is created if missing", str(&c.DatabaseURL)},
		{"LISTEN_ADDR", "listen-addr", ":9090", "HTTP listen address", str(&c.ListenAddr)},
		{"OBJECTS_URL", "objects-url", "http://localhost:9010", "object service base URL", urlValue(&c.ObjectsURL)},
		{"EXPIRE_AFTER", "expire-after", "30s", "delete objects not named by a callback for this long", duration(&c.ExpireAfter)},
		{"FETCH_MIN_CONCURRENCY", "fetch-min-concurrency", strconv.Itoa(fetch.MinConcurrencyDefault), "floor of the adaptive limit of lookups in flight (where it starts)", positiveInt(&c.FetchMinConcurrency)},
		{"FETCH_CONCURRENCY", "fetch-concurrency", strconv.Itoa(fetch.ConcurrencyDefault), "ceiling of the adaptive limit of lookups in flight (and of keep-alive connections)", positiveInt(&c.FetchConcurrency)},
		{"FETCH_TIMEOUT", "fetch-timeout", fetch.TimeoutDefault.String(), "timeout of one lookup", duration(&c.FetchTimeout)},
		{"MAX_PENDING", "max-pending", strconv.Itoa(merge.MaxPendingDefault), fmt.Sprintf("objects waiting for a lookup at most (at least %d); only when it is full are newer ids dropped (counted)", merge.MinPending), atLeast(&c.MaxPending, merge.MinPending)},
		{"OVERLOAD_PACE", "overload-pace", pace.TargetDefault.String(), "while overloaded, a callback of ids the service does not track (a flood of fresh ids) is answered this long after its receipt, so that its sender slows down (0: never); keep it well under the senders' timeout", durationOrZero(&c.OverloadPace)},
		{"RETRY_AFTER_MAX", "retry-after-max", fetch.RetryAfterMaxDefault.String(), "longest wait a Retry-After from the object service can impose (at most half of EXPIRE_AFTER; unset: the default or half of EXPIRE_AFTER, whichever is less)", duration(&c.RetryAfterMax)},
		{"LEASE", "lease", fetch.LeaseDefault.String(), "how long a claimed lookup is reserved; must exceed FETCH_TIMEOUT by 1s", duration(&c.Lease)},
		{"SPOOL_DIR", "spool-dir", "spool", "directory for callbacks accepted while Postgres is unreachable", str(&c.SpoolDir)},
		{"REPLICA_TIMEOUT", "replica-timeout", watermark.SilenceDefault.String(), "a replica not heard from for this long no longer holds expiry back (rows can outlive the window by this much while one is cut off)", duration(&c.ReplicaTimeout)},
		{"MAX_BODY_BYTES", "max-body-bytes", "1048576", "largest accepted request body", positiveInt64(&c.MaxBodyBytes)},
		{"MAX_IDS", "max-ids", "10000", "most object ids in one callback", positiveInt(&c.MaxIDs)},
		{"BODY_TIMEOUT", "body-timeout", "1s", "a request body must arrive within this, or 408", duration(&c.BodyTimeout)},
		{"CALLBACK_TOKEN", "callback-token", "", "if set, POST /callback requires Authorization: Bearer <token>", str(&c.CallbackToken)},
		{"DB_MAX_CONNS", "db-max-conns", "16", "Postgres connections at most", positiveInt(&c.DBMaxConns)},
		{"COMMIT_TIMEOUT", "commit-timeout", inbox.CommitTimeoutDefault.String(), "a durable write slower than this goes to the spool instead", duration(&c.CommitTimeout)},
		{"SHUTDOWN_DRAIN", "shutdown-drain", "5s", "on SIGTERM, keep serving this long with /readyz at 503 before closing the listener (0: close at once)", durationOrZero(&c.ShutdownDrain)},
		{"SHUTDOWN_TIMEOUT", "shutdown-timeout", "10s", "after the drain, exit within this long", duration(&c.ShutdownTimeout)},
		{"STATUS_INTERVAL", "status-interval", statusIntervalDefault.String(), "log a one-line status this often (0: never)", durationOrZero(&c.StatusInterval)},
		{"LOG_FORMAT", "log-format", "auto", "json, text, or auto (text on a terminal)", oneOf(&c.LogFormat, "auto", "json", "text")},
		{"LOG_LEVEL", "log-level", "info", "debug, info, warn or error", oneOf(&c.LogLevel, "debug", "info", "warn", "error")},
		{"PPROF_ADDR", "pprof-addr", "", "if set, serve net/http/pprof on this address", str(&c.PprofAddr)},
		{"CONSOLE", "console", "on", "the live page at GET / and the sampler behind it: on or off", onOff(&c.Console)},
	}

	fs := flag.NewFlagSet("callback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flagValues := make([]*string, len(settings))
	for i, s := range settings {
		flagValues[i] = fs.String(s.flag, "", fmt.Sprintf("%s (%s, env %s, default %q)", s.help, kind(s.def), s.env, s.def))
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	for i, s := range settings {
		v, from := s.def, "default"
		if e := getenv(s.env); e != "" {
			v, from = e, s.env
		}
		if set[s.flag] {
			v, from = *flagValues[i], "-"+s.flag
		}
		if err := s.parse(v); err != nil {
			return config{}, fmt.Errorf("invalid %s (from %s) %q: %w", s.env, from, v, err)
		}
	}
	if getenv("FETCH_MIN_CONCURRENCY") == "" && !set["fetch-min-concurrency"] {
		// A ceiling set below the default floor is a fixed limit, not an error.
		c.FetchMinConcurrency = min(c.FetchMinConcurrency, c.FetchConcurrency)
	}
	if c.ReplicaTimeout < 3*watermark.HeartbeatDefault {
		return config{}, fmt.Errorf("invalid REPLICA_TIMEOUT %v: must be at least %v, three heartbeats", c.ReplicaTimeout, 3*watermark.HeartbeatDefault)
	}
	if getenv("RETRY_AFTER_MAX") == "" && !set["retry-after-max"] {
		c.RetryAfterMax = min(c.RetryAfterMax, c.ExpireAfter/2)
	}
	if err := c.fetchConfig().Validate(); err != nil {
		return config{}, fmt.Errorf("invalid FETCH_MIN_CONCURRENCY, FETCH_CONCURRENCY, FETCH_TIMEOUT, LEASE, RETRY_AFTER_MAX or EXPIRE_AFTER: %w", err)
	}
	return c, nil
}

// fetchConfig is the fetcher's configuration: what the environment sets, the rest the
// fetcher's defaults. Its Validate is the one check of these settings together, the
// one fetch.New makes.
func (c config) fetchConfig() fetch.Config {
	return fetch.Config{
		MinConcurrency: c.FetchMinConcurrency, Concurrency: c.FetchConcurrency,
		Timeout: c.FetchTimeout, Lease: c.Lease, ExpireAfter: c.ExpireAfter, RetryAfterMax: c.RetryAfterMax,
	}
}

// kind names a setting's type in -h, from its default: flag prints the backquoted
// word after the flag's name instead of "string".
func kind(def string) string {
	if _, err := time.ParseDuration(def); err == nil {
		return "a `duration`"
	}
	if _, err := strconv.ParseInt(def, 10, 64); err == nil {
		return "an `int`"
	}
	return "a `string`"
}

func str(p *string) func(string) error { return func(v string) error { *p = v; return nil } }

func duration(p *time.Duration) func(string) error {
	return func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		if d <= 0 {
			return errors.New("must be positive")
		}
		*p = d
		return nil
	}
}

func durationOrZero(p *time.Duration) func(string) error {
	return func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		if d < 0 {
			return errors.New("must not be negative")
		}
		*p = d
		return nil
	}
}

func positiveInt(p *int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n < 1 {
			return errors.New("must be at least 1")
		}
		*p = n
		return nil
	}
}

func atLeast(p *int, least int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n < least {
			return fmt.Errorf("must be at least %d", least)
		}
		*p = n
		return nil
	}
}

func positiveInt64(p *int64) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return err
		}
		if n < 1 {
			return errors.New("must be at least 1")
		}
		*p = n
		return nil
	}
}

func urlValue(p *string) func(string) error {
	return func(v string) error {
		u, err := url.Parse(v)
		if err != nil {
			return err
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return errors.New("must be an http(s) URL with a host")
		}
		*p = v
		return nil
	}
}

func onOff(p *bool) func(string) error {
	return func(v string) error {
		switch v {
		case "on":
			*p = true
		case "off":
			*p = false
		default:
			return errors.New("must be on or off")
		}
		return nil
	}
}

func oneOf(p *string, allowed ...string) func(string) error {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				*p = v
				return nil
			}
		}
		return fmt.Errorf("must be one of %v", allowed)
	}
}
