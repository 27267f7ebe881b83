// Command devpg makes sure a PostgreSQL server answers at DATABASE_URL, and starts a
// throwaway local cluster at that host:port when none does.
//
// It exists so that `make run` and `make test` work the same on a machine with a
// Postgres already listening and on one that only has the server binaries installed
// (a fresh CI machine, a laptop without a running service). Only the server is its
// business: the service creates its own database (dbmate) and the tests create theirs
// (pgtestdb).
//
//	devpg ensure   a server answers at DATABASE_URL, or one is started there
//	devpg stop     stop the cluster that devpg started for DATABASE_URL's port
//
// Environment:
//
//	DATABASE_URL  default postgres://postgres@127.0.0.1:5432/callback?sslmode=disable
//	DEVPG_DIR     data directory of the throwaway cluster (default .devpg/<port>)
//	DEVPG_FAST=1  fsync, synchronous_commit and full_page_writes off: tests only
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/objwatch/callback/internal/devpg"
)

// defaultDatabaseURL matches the Makefile's and the service's default.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/callback?sslmode=disable"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "devpg:", err)
		os.Exit(1)
	}
}

const usage = `usage: devpg ensure|stop

  ensure  make sure a PostgreSQL server answers at DATABASE_URL; when none does,
          start a throwaway local cluster at that host:port (data in DEVPG_DIR,
          default .devpg/<port>)
  stop    stop the cluster devpg started for DATABASE_URL's port, if any

Environment: DATABASE_URL (default ` + defaultDatabaseURL + `),
DEVPG_DIR, DEVPG_FAST=1 (no fsync: for tests only).
`

// errUsage is returned for a missing or unknown subcommand.
var errUsage = errors.New("unknown command (want ensure or stop)")

// run is the whole program; main only wires the process to it, and internal/devpg
// does the work.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	rawURL := getenv("DATABASE_URL")
	if rawURL == "" {
		rawURL = defaultDatabaseURL
	}
	switch args[0] {
	case "ensure":
		t, err := devpg.ParseTarget(rawURL)
		if err != nil {
			return err
		}
		return devpg.Ensure(ctx, t, devpg.Options{
			Dir:  getenv("DEVPG_DIR"),
			Fast: getenv("DEVPG_FAST") == "1",
		}, stdout)
	case "stop":
		t, err := devpg.ParseTarget(rawURL)
		if err != nil {
			return err
		}
		return devpg.Stop(ctx, t, devpg.Options{Dir: getenv("DEVPG_DIR")}, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%q: %w", args[0], errUsage)
	}
}
