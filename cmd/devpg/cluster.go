package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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
		fmt.Fprintf(stdout, "devpg: PostgreSQL answers at %s\n", t.Addr())
		return nil
	}
	if !errors.Is(err, errNotAnswering) {
		return err
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

	as, err := currentRunner()
	if err != nil {
		return err
	}
	dir, err := prepareDataDir(ctx, as, opts.dir, t.Port)
	if err != nil {
		return err
	}
	// A data directory left by an earlier run starts only with its own major version:
	// prefer those binaries, and say so plainly when they are not installed.
	binDir, err := discoverBinDir(ctx, clusterVersion(dir))
	if err != nil {
		if errors.Is(err, errWrongVersion) {
			return fmt.Errorf("%s: %w; install that version, or remove the directory (it is a throwaway cluster) or set DEVPG_DIR elsewhere", dir, err)
		}
		return err
	}

	if !isCluster(dir) {
		// --locale=C with UTF8: the same result whatever LANG the machine (or CI) has.
		out, err := as.run(ctx, dir, filepath.Join(binDir, "initdb"),
			"-D", dir, "-U", t.User, "--auth=trust", "--no-sync",
			"--encoding=UTF8", "--locale=C")
		if err != nil {
			return fmt.Errorf("initdb in %s: %w\n%s", dir, err, out)
		}
	}

	logFile := filepath.Join(dir, "log")
	out, err := as.run(ctx, dir, filepath.Join(binDir, "pg_ctl"),
		"-D", dir, "-w", "-t", "60", "-l", logFile,
		"-o", serverOptions(t, socketDir(dir, t.Port), opts.fast), "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start in %s: %w\n%s\nlast lines of %s:\n%s",
			dir, err, out, logFile, tail(logFile, 20))
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
				dir, err, logFile, tail(logFile, 20))
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
	as, err := currentRunner()
	if err != nil {
		return err
	}
	for _, dir := range dataDirCandidates(opts.dir, t.Port) {
		if !isCluster(dir) {
			continue
		}
		binDir, err := discoverBinDir(ctx, clusterVersion(dir))
		if err != nil {
			return err
		}
		// pg_ctl status exits 3 when no server runs, a stale postmaster.pid included.
		if _, err := as.run(ctx, dir, filepath.Join(binDir, "pg_ctl"), "-D", dir, "status"); err != nil {
			fmt.Fprintf(stdout, "devpg: the cluster in %s is not running\n", dir)
			return nil
		}
		out, err := as.run(ctx, dir, filepath.Join(binDir, "pg_ctl"), "-D", dir, "-m", "fast", "-w", "stop")
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
		"-k", shellQuote(sockDir),
		"-c", "listen_addresses=" + shellQuote(t.Host),
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

// shellQuote quotes s for /bin/sh when it has anything but safe characters.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:=,+@", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
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
func prepareDataDir(ctx context.Context, as runner, explicit string, port uint16) (string, error) {
	var errs []error
	for _, dir := range dataDirCandidates(explicit, port) {
		err := as.takeDir(ctx, dir)
		if err == nil {
			return dir, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("preparing a data directory: %w", errors.Join(errs...))
}

// clusterVersion is the major version that made the cluster in dir ("": none there).
func clusterVersion(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// isCluster tells whether dir holds an initialised cluster.
func isCluster(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// runner runs the server programs: as this user, or, when this is root (initdb and
// pg_ctl refuse to run as root), as the postgres user.
type runner struct {
	cred *syscall.Credential // nil: run as ourselves
}

func currentRunner() (runner, error) {
	if os.Geteuid() != 0 {
		return runner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return runner{}, fmt.Errorf("running as root, and initdb and pg_ctl refuse root: need the postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return runner{}, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return runner{}, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return runner{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// run runs a program in dir and returns its combined output. pg_ctl's server
// redirects all three standard streams to the log file, so Wait does not hang on it.
func (r runner) run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = serverEnv(os.Environ())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if r.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	}
	err := cmd.Run()
	return bytes.TrimSpace(out.Bytes()), err
}

// takeDir creates dir (mode 0700, as the server requires) and makes sure the user
// that runs the server can use it.
func (r runner) takeDir(ctx context.Context, dir string) error {
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, os.ErrNotExist)
	// The parents stay traversable for the postgres user; the data directory itself
	// is private, as the server requires.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if r.cred == nil {
		return nil
	}
	if !isCluster(dir) {
		if err := os.Chown(dir, int(r.cred.Uid), int(r.cred.Gid)); err != nil {
			return fmt.Errorf("handing %s to the postgres user: %w", dir, err)
		}
	}
	if _, err := r.run(ctx, "/", "/bin/sh", "-c", `test -r "$1" && test -w "$1" && test -x "$1"`, "sh", dir); err != nil {
		if created {
			os.Remove(dir) // only if still empty; leave nothing behind we cannot use
		}
		return fmt.Errorf("the postgres user cannot use %s (a parent directory is private?)", dir)
	}
	return nil
}

// serverEnv drops libpq variables that would steer pg_ctl away from our flags.
func serverEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
