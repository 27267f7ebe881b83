package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/objwatch/callback/internal/childproc"
	"github.com/objwatch/callback/internal/devpg"
)

// options are the knobs from the environment.
type options struct {
	dir  string // DEVPG_DIR: the data directory; empty means .devpg/<port> here
	fast bool   // DEVPG_FAST=1
}

// ensure makes sure a server answers at t, starting a local cluster there if needed.
func ensure(ctx context.Context, t target, opts options, stdout io.Writer) error {
	err := probe(ctx, t)
	if err == nil {
		fmt.Fprintf(stdout, "devpg: PostgreSQL answers at %s\n", t.Addrs())
		return nil
	}
	if !errors.Is(err, errNotAnswering) {
		return err
	}
	// A URL that names several hosts points at a primary and its standbys: a
	// replicated set that someone runs on purpose. devpg starts nothing for it (one
	// throwaway cluster on the first port would be no such set, and would take a
	// standby's place); it only requires that some host answers.
	if len(t.Others) > 0 {
		return fmt.Errorf("%w: DATABASE_URL names several hosts (%s), and devpg starts a cluster only for a single-host URL: start the servers, or point DATABASE_URL at one host", err, t.Addrs())
	}
	if isSocketDir(t.Host) {
		return fmt.Errorf("%w; devpg starts clusters on TCP addresses only, not on socket directory %s", err, t.Host)
	}
	local, lerr := isLocal(ctx, t.Host)
	if lerr != nil {
		return fmt.Errorf("%w; %w", err, lerr)
	}
	if !local {
		return fmt.Errorf("%w, and %s is not this machine: start the server there or point DATABASE_URL elsewhere", err, t.Host)
	}

	as, err := devpg.CurrentRunner()
	if err != nil {
		return err
	}
	dir, err := prepareDataDir(ctx, as, opts.dir, t.Port)
	if err != nil {
		return err
	}
	// A data directory left by an earlier run starts only with its own major version:
	// prefer those binaries, and say so plainly when they are not installed.
	binDir, err := devpg.DiscoverBinDir(ctx, devpg.ClusterVersion(dir))
	if err != nil {
		if errors.Is(err, devpg.ErrWrongVersion) {
			return fmt.Errorf("%s: %w; install that version, or remove the directory (it is a throwaway cluster) or set DEVPG_DIR elsewhere", dir, err)
		}
		return err
	}

	if !devpg.IsCluster(dir) {
		// --locale=C with UTF8: the same result whatever LANG the machine (or CI) has.
		out, err := as.Run(ctx, dir, filepath.Join(binDir, "initdb"),
			"-D", dir, "-U", t.User, "--auth=trust", "--no-sync",
			"--encoding=UTF8", "--locale=C")
		if err != nil {
			return fmt.Errorf("initdb in %s: %w\n%s", dir, err, out)
		}
	}

	logFile := filepath.Join(dir, "log")
	out, err := as.Run(ctx, dir, filepath.Join(binDir, "pg_ctl"),
		"-D", dir, "-w", "-t", "60", "-l", logFile,
		"-o", serverOptions(t, socketDir(dir, t.Port), opts.fast), "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start in %s: %w\n%s\nlast lines of %s:\n%s",
			dir, err, out, logFile, childproc.Tail(logFile, 20))
	}

	// pg_ctl -w waited for the postmaster; check it is reachable the way clients are.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = probe(ctx, t)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("started a cluster in %s but cannot connect: %w\nlast lines of %s:\n%s",
				dir, err, logFile, childproc.Tail(logFile, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	mode := ""
	if opts.fast {
		mode = ", fsync off"
	}
	fmt.Fprintf(stdout, "devpg: started PostgreSQL from %s at %s (data and log in %s%s); stop it with `make db/stop`\n",
		binDir, t.Addr(), dir, mode)
	return nil
}

// stopCluster stops the cluster devpg started for t's port, if there is one.
func stopCluster(ctx context.Context, t target, opts options, stdout io.Writer) error {
	if len(t.Others) > 0 {
		fmt.Fprintf(stdout, "devpg: DATABASE_URL names several hosts (%s); devpg starts and stops nothing for those\n", t.Addrs())
		return nil
	}
	as, err := devpg.CurrentRunner()
	if err != nil {
		return err
	}
	for _, dir := range dataDirCandidates(opts.dir, t.Port) {
		if !devpg.IsCluster(dir) {
			continue
		}
		binDir, err := devpg.DiscoverBinDir(ctx, devpg.ClusterVersion(dir))
		if err != nil {
			return err
		}
		// pg_ctl status exits 3 when no server runs, a stale postmaster.pid included.
		if _, err := as.Run(ctx, dir, filepath.Join(binDir, "pg_ctl"), "-D", dir, "status"); err != nil {
			fmt.Fprintf(stdout, "devpg: the cluster in %s is not running\n", dir)
			return nil
		}
		out, err := as.Run(ctx, dir, filepath.Join(binDir, "pg_ctl"), "-D", dir, "-m", "fast", "-w", "stop")
		if err != nil {
			return fmt.Errorf("pg_ctl stop in %s: %w\n%s", dir, err, out)
		}
		fmt.Fprintf(stdout, "devpg: stopped the cluster in %s\n", dir)
		return nil
	}
	fmt.Fprintf(stdout, "devpg: nothing to stop for port %d (no running cluster of devpg's)\n", t.Port)
	return nil
}

// serverOptions are the postgres flags, as one string that pg_ctl hands to /bin/sh.
func serverOptions(t target, sockDir string, fast bool) string {
	opts := []string{
		"-p", strconv.Itoa(int(t.Port)),
		"-k", devpg.ShellQuote(sockDir),
		"-c", "listen_addresses=" + devpg.ShellQuote(t.Host),
		// The service's worker pools, pgtestdb's template databases and parallel
		// test packages add up to more than the default 100.
		"-c", "max_connections=200",
	}
	if fast {
		// A throwaway test cluster loses nothing of value in a crash. Never for
		// `make run`, which demonstrates durability.
		opts = append(opts, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	return strings.Join(opts, " ")
}

// socketDir is where the server puts its Unix socket: the data directory, unless that
// path is too long for a socket address (108 bytes on Linux, with the file name).
func socketDir(dataDir string, port uint16) string {
	if len(dataDir)+len("/.s.PGSQL.")+len(strconv.Itoa(int(port)))+len(".lock") < 100 {
		return dataDir
	}
	return os.TempDir()
}

// dataDirCandidates lists where the cluster for port may live: DEVPG_DIR when set;
// otherwise .devpg/<port> here, then the fallback in the temp directory that ensure
// uses when the postgres user cannot reach the working tree.
func dataDirCandidates(explicit string, port uint16) []string {
	if explicit != "" {
		abs, err := filepath.Abs(explicit)
		if err != nil {
			abs = explicit
		}
		return []string{abs}
	}
	var out []string
	if cwd, err := os.Getwd(); err == nil {
		out = append(out, filepath.Join(cwd, ".devpg", strconv.Itoa(int(port))))
	}
	return append(out, filepath.Join(os.TempDir(), "devpg-"+strconv.Itoa(int(port))))
}

// prepareDataDir creates the data directory and, when running as root, hands it to the
// postgres user. A working tree under a private directory (say /root) is out of that
// user's reach; the default then falls back to the temp directory.
func prepareDataDir(ctx context.Context, as devpg.Runner, explicit string, port uint16) (string, error) {
	var errs []error
	for _, dir := range dataDirCandidates(explicit, port) {
		err := as.TakeDir(ctx, dir)
		if err == nil {
			return dir, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("preparing a data directory: %w", errors.Join(errs...))
}
