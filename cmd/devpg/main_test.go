package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/objwatch/callback/internal/devpg"
	"github.com/objwatch/callback/internal/testhelper"
	"github.com/objwatch/callback/internal/testnet"
)

// A cluster left by a version that is no longer installed: ensure says which and what
// to do, and touches nothing.
func TestRun_ensure_refuses_a_cluster_of_another_version(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := devpg.DiscoverBinDir(ctx, ""); err != nil {
		t.Skipf("no PostgreSQL server binaries on this machine: %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} { // as in the test above
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(root, "data")
	// 0777: as root, the server's user must be able to use what a root-owned test made.
	if err := os.Mkdir(dir, 0o777); err != nil || os.Chmod(dir, 0o777) != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("9.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := testhelper.Getenv(map[string]string{
		"DATABASE_URL": fmt.Sprintf("postgres://postgres@127.0.0.1:%d/callback?sslmode=disable", testnet.FreePort(t)),
		"DEVPG_DIR":    dir,
	})
	var out bytes.Buffer
	err := run(ctx, []string{"ensure"}, env, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "made by PostgreSQL 9.1") || !strings.Contains(err.Error(), "DEVPG_DIR") {
		t.Fatalf("ensure = %v\n%s; want an error naming version 9.1 and DEVPG_DIR", err, out.String())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the data directory was changed: %v", entries)
	}
}

func TestRun_rejects_unknown_command(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"frobnicate"}, testhelper.Getenv(nil), &stdout, &stderr)
	if !errors.Is(err, errUsage) {
		t.Errorf("run(frobnicate) = %v, want errUsage", err)
	}
	if !strings.Contains(stderr.String(), "usage: devpg") {
		t.Errorf("stderr = %q, want the usage", stderr.String())
	}
}

func TestRun_stop_with_nothing_started_says_so(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL": "postgres://postgres@127.0.0.1:1/callback?sslmode=disable",
		"DEVPG_DIR":    filepath.Join(t.TempDir(), "none"),
	}
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"stop"}, testhelper.Getenv(env), &stdout, &stdout); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(stdout.String(), "nothing to stop") {
		t.Errorf("stop printed %q, want it to say there is nothing to stop", stdout.String())
	}
}

// TestRun_ensure_starts_a_cluster_where_none_answers is the real thing: a free port,
// a temp data directory, initdb, pg_ctl start, a connection, stop, restart from the
// same data directory, stop.
func TestRun_ensure_starts_a_cluster_where_none_answers(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := devpg.DiscoverBinDir(ctx, ""); err != nil {
		t.Skipf("no PostgreSQL server binaries on this machine: %v", err)
	}

	root := t.TempDir()
	// t.TempDir makes private (0700) directories; as root the server runs as the
	// postgres user, which must be able to reach its data directory.
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := testnet.FreePort(t)
	databaseURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/callback?sslmode=disable", port)
	env := testhelper.Getenv(map[string]string{
		"DATABASE_URL": databaseURL,
		"DEVPG_DIR":    filepath.Join(root, "data"),
		"DEVPG_FAST":   "1",
	})
	runCmd := func(cmd string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(ctx, []string{cmd}, env, &out, &out); err != nil {
			t.Fatalf("devpg %s: %v\n%s", cmd, err, out.String())
		}
		return out.String()
	}
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		var out bytes.Buffer
		if err := run(context.Background(), []string{"stop"}, env, &out, &out); err != nil {
			t.Errorf("cleanup stop: %v\n%s", err, out.String())
		}
	})

	if out := runCmd("ensure"); !strings.Contains(out, "started PostgreSQL") {
		t.Errorf("first ensure printed %q, want it to start a cluster", out)
	}
	assertServer(ctx, t, databaseURL, "off")

	if out := runCmd("ensure"); !strings.Contains(out, "answers at") {
		t.Errorf("second ensure printed %q, want it to find the running cluster", out)
	}

	if out := runCmd("stop"); !strings.Contains(out, "stopped") {
		t.Errorf("stop printed %q", out)
	}
	tg, err := devpg.ParseTarget(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := devpg.Probe(ctx, tg); !errors.Is(err, devpg.ErrNotAnswering) {
		t.Fatalf("after stop, probe = %v, want devpg.ErrNotAnswering", err)
	}

	if out := runCmd("ensure"); !strings.Contains(out, "started PostgreSQL") {
		t.Errorf("ensure after stop printed %q, want it to start the existing cluster", out)
	}
	assertServer(ctx, t, databaseURL, "off")
}

// assertServer connects to the postgres database behind databaseURL and checks the
// settings devpg promises.
func assertServer(ctx context.Context, t *testing.T, databaseURL, wantFsync string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connecting to the started cluster: %v", err)
	}
	defer conn.Close(ctx)
	var fsync, maxConns string
	if err := conn.QueryRow(ctx, "select current_setting('fsync'), current_setting('max_connections')").Scan(&fsync, &maxConns); err != nil {
		t.Fatal(err)
	}
	if fsync != wantFsync || maxConns != "200" {
		t.Errorf("fsync=%s max_connections=%s, want fsync=%s max_connections=200", fsync, maxConns, wantFsync)
	}
}

// A URL naming a primary and its standbys is a replicated set someone runs: when none
// of its hosts answers, ensure says so and starts nothing (a single cluster on the first
// port would be no such set).
func TestRun_ensure_multi_host_url_starts_nothing(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	env := testhelper.Getenv(map[string]string{
		"DATABASE_URL": fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/callback?sslmode=disable", testnet.FreePort(t), testnet.FreePort(t)),
		"DEVPG_DIR":    dir,
	})
	var out bytes.Buffer
	err := run(context.Background(), []string{"ensure"}, env, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "several hosts") {
		t.Fatalf("ensure = %v\n%s; want an error about several hosts", err, out.String())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("ensure made %s for a multi-host URL: %v", dir, err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"stop"}, env, &out, &out); err != nil || !strings.Contains(out.String(), "several hosts") {
		t.Errorf("stop = %v\n%s; want it to say it stops nothing", err, out.String())
	}
}

// When some host of a multi-host URL answers, that is enough: here a dead port first,
// then the server the tests use.
func TestRun_ensure_multi_host_url_with_a_live_host(t *testing.T) {
	t.Parallel()
	live := os.Getenv("DATABASE_URL")
	if live == "" {
		live = defaultDatabaseURL
	}
	tg, err := devpg.ParseTarget(live)
	if err != nil || len(tg.Others) > 0 || devpg.IsSocketDir(tg.Host) {
		t.Skipf("DATABASE_URL is not one TCP host: %v", err)
	}
	if err := devpg.Probe(context.Background(), tg); err != nil {
		t.Skipf("no server answers at DATABASE_URL: %v", err)
	}
	env := testhelper.Getenv(map[string]string{
		"DATABASE_URL": fmt.Sprintf("postgres://%s@127.0.0.1:%d,%s/callback?sslmode=disable", tg.User, testnet.FreePort(t), tg.Addr()),
	})
	var out bytes.Buffer
	if err := run(context.Background(), []string{"ensure"}, env, &out, &out); err != nil {
		t.Fatalf("ensure: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "answers at") {
		t.Errorf("ensure said %q", out.String())
	}
}
