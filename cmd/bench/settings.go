package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// settings are the service binary's own settings, read from its -h: each environment
// variable and its default. The bench measures whatever binary it is given
// (-service-bin may be another build), so the defaults it prints and falls back on
// come from that binary, not from this tree's constants, and a setting added later is
// known without a change here.
type settings map[string]string // variable -> default

// settingHelp matches the end of a setting's line in the service's -h:
// `(a duration, env OVERLOAD_PACE, default "600ms")`; the default is Go-quoted.
var settingHelp = regexp.MustCompile(`env ([A-Z][A-Z0-9_]*), default ("(?:[^"\\]|\\.)*")\)`)

// readSettings runs bin -h and parses its settings.
func readSettings(ctx context.Context, bin string) (settings, error) {
	// -h exits non-zero (flag.ErrHelp); what counts is what it printed.
	out, _ := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	s, err := parseSettings(string(out))
	if err != nil {
		return nil, fmt.Errorf("%s -h: %w", bin, err)
	}
	return s, nil
}

// parseSettings reads the settings out of the service's -h.
func parseSettings(help string) (settings, error) {
	s := settings{}
	for _, m := range settingHelp.FindAllStringSubmatch(help, -1) {
		def, err := strconv.Unquote(m[2])
		if err != nil {
			return nil, fmt.Errorf("default of %s: %w", m[1], err)
		}
		s[m[1]] = def
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("no settings (`env NAME, default \"...\"`) in:\n%s", help)
	}
	return s, nil
}

// childEnv is environ without any of the service's settings, then set (NAME=value
// each). A setting exported in the shell that runs the bench (FETCH_CONCURRENCY=512,
// CONSOLE=off...) must not reach a phase that is meant to measure the defaults: every
// setting a phase changes is in set, where the phase can be read.
func (s settings) childEnv(environ []string, set ...string) []string {
	out := make([]string, 0, len(environ)+len(set))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if _, ours := s[name]; !ours {
			out = append(out, kv)
		}
	}
	return append(out, set...)
}

// benchSets are the settings the bench gives every service it starts: where it listens
// and what it talks to, and quieter logs and no shutdown drain. None of them changes
// the work the service does per callback or per lookup.
var benchSets = []string{"DATABASE_URL", "LISTEN_ADDR", "OBJECTS_URL", "SPOOL_DIR", "LOG_FORMAT", "LOG_LEVEL",
	"STATUS_INTERVAL", "SHUTDOWN_DRAIN", "PPROF_ADDR"}

// defaults lists every setting the bench leaves at its default, sorted, as NAME=value
// (an empty default as NAME unset).
func (s settings) defaults() string {
	var out []string
	for name, def := range s {
		if slices.Contains(benchSets, name) {
			continue
		}
		if def == "" {
			out = append(out, name+" unset")
		} else {
			out = append(out, name+"="+def)
		}
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// fetchConcurrency is FETCH_CONCURRENCY's default, the lookup limit's ceiling; 0 if
// the binary does not say.
func (s settings) fetchConcurrency() float64 {
	n, _ := strconv.ParseFloat(s["FETCH_CONCURRENCY"], 64)
	return n
}
