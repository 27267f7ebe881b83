package devpg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/objwatch/callback/internal/childproc"
)

// Options are cmd/devpg's knobs, from its environment.
type Options struct {
	Dir  string // DEVPG_DIR: the data directory; empty means .devpg/<port> here
	Fast bool   // DEVPG_FAST=1
}

// Ensure makes sure a server answers at t, starting a local cluster there if needed.
func Ensure(ctx context.Context, t Target, opts Options, stdout io.Writer) error {
	err := Probe(ctx, t)
	if err == nil {
		fmt.Fprintf(stdout, "devpg: PostgreSQL answers at %s\n", t.Addrs())
		return nil
	}
	if !errors.Is(err, ErrNotAnswering) {
		return err
	}
	// A URL that names several hosts points at a primary and its standbys: a
	// replicated set that someone runs on purpose. devpg starts nothing for it (one
	// throwaway cluster on the first port would be no such set, and would take a
	// standby's place); it only requires that some host answers.
	if len(t.Others) > 0 {
		return fmt.Errorf("%w: DATABASE_URL names several hosts (%s), and devpg starts a cluster only for a single-host URL: start the servers, or point DATABASE_URL at one host", err, t.Addrs())
	}
	if IsSocketDir(t.Host) {
		return fmt.Errorf("%w; devpg starts clusters on TCP addresses only, not on socket directory %s", err, t.Host)
	}
	local, lerr := isLocal(ctx, t.Host)
	if lerr != nil {
		return fmt.Errorf("%w; %w", err, lerr)
	}
	if !local {
		return fmt.Errorf("%w, and %s is not this machine: start the server there or point DATABASE_URL elsewhere", err, t.Host)
	}

	as, err := CurrentRunner()
	if err != nil {
		return err
	}
	dir, err := prepareDataDir(ctx, as, opts.Dir, t.Port)
	if err != nil {
		return err
	}
	// A data directory left by an earlier run starts only with its own major version:
	// prefer those binaries, and say so plainly when they are not installed.
	binDir, err := DiscoverBinDir(ctx, ClusterVersion(dir))
	if err != nil {
		if errors.Is(err, ErrWrongVersion) {
			return fmt.Errorf("%s: %w; install that version, or remove the directory (it is a throwaway cluster) or set DEVPG_DIR elsewhere", dir, err)
		}
		return err
	}

	c := devCluster(binDir, dir, as)
	if !IsCluster(dir) {
		if err := c.Init(ctx, t.User); err != nil {
			return err
		}
	}
	if err := c.Start(ctx, serverOptions(t, SocketDir(dir, int(t.Port)), opts.Fast)); err != nil {
		return err
	}

	// pg_ctl -w waited for the postmaster; check it is reachable the way clients are.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = Probe(ctx, t)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("started a cluster in %s but cannot connect: %w\nlast lines of %s:\n%s",
				dir, err, c.Log, childproc.Tail(c.Log, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	mode := ""
	if opts.Fast {
		mode = ", fsync off"
	}
	fmt.Fprintf(stdout, "devpg: started PostgreSQL from %s at %s (data and log in %s%s); stop it with `make db/stop`\n",
		binDir, t.Addr(), dir, mode)
	return nil
}

// Stop stops the cluster Ensure started for t's port, if there is one.
func Stop(ctx context.Context, t Target, opts Options, stdout io.Writer) error {
	if len(t.Others) > 0 {
		fmt.Fprintf(stdout, "devpg: DATABASE_URL names several hosts (%s); devpg starts and stops nothing for those\n", t.Addrs())
		return nil
	}
	as, err := CurrentRunner()
	if err != nil {
		return err
	}
	for _, dir := range dataDirCandidates(opts.Dir, t.Port) {
		if !IsCluster(dir) {
			continue
		}
		binDir, err := DiscoverBinDir(ctx, ClusterVersion(dir))
		if err != nil {
			return err
		}
		c := devCluster(binDir, dir, as)
		if !c.Running(ctx) {
			fmt.Fprintf(stdout, "devpg: the cluster in %s is not running\n", dir)
			return nil
		}
		if err := c.Stop(ctx, "fast"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "devpg: stopped the cluster in %s\n", dir)
		return nil
	}
	fmt.Fprintf(stdout, "devpg: nothing to stop for port %d (no running cluster of devpg's)\n", t.Port)
	return nil
}

// devCluster is the cluster in dir as Ensure keeps it: its log beside its data.
func devCluster(binDir, dir string, as Runner) Cluster {
	return Cluster{Bin: binDir, Data: dir, Log: filepath.Join(dir, "log"), As: as}
}

// serverOptions are the postgres flags of the cluster Ensure starts for t.
func serverOptions(t Target, sockDir string, fast bool) string {
	// The service's worker pools, pgtestdb's template databases and parallel test
	// packages add up to more than the default 100.
	settings := []string{"max_connections=200"}
	if fast {
		// A throwaway test cluster loses nothing of value in a crash. Never for
		// `make run`, which demonstrates durability.
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off")
	}
	return ServerOptions(int(t.Port), sockDir, t.Host, settings...)
}

// dataDirCandidates lists where the cluster for port may live: DEVPG_DIR when set;
// otherwise .devpg/<port> here, then the fallback in the temp directory that Ensure
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
func prepareDataDir(ctx context.Context, as Runner, explicit string, port uint16) (string, error) {
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
