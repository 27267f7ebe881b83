package devpg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/objwatch/callback/internal/childproc"
)

// Cluster is a PostgreSQL data directory and the server binaries that run it: what
// initdb makes and pg_ctl starts, stops and promotes.
type Cluster struct {
	Bin  string // the server binaries' directory (DiscoverBinDir)
	Data string // the data directory, usable by As (Runner.TakeDir)
	Log  string // the server's log file (pg_ctl -l)
	As   Runner
}

// Run runs program from Bin as the cluster's user, in the data directory, and
// returns its combined output.
func (c Cluster) Run(ctx context.Context, program string, args ...string) ([]byte, error) {
	return c.As.Run(ctx, c.Data, filepath.Join(c.Bin, program), args...)
}

// Init makes an empty cluster in Data whose superuser is user, reached without a
// password (a throwaway cluster on this machine). --locale=C with UTF8: the same
// result whatever LANG the machine (or CI) has. No fsync of the new files: a crash
// during initdb leaves nothing worth keeping.
func (c Cluster) Init(ctx context.Context, user string) error {
	out, err := c.Run(ctx, "initdb", "-D", c.Data, "-U", user, "--auth=trust", "--no-sync",
		"--encoding=UTF8", "--locale=C")
	if err != nil {
		return fmt.Errorf("initdb in %s: %w\n%s", c.Data, err, out)
	}
	return nil
}

// Start starts the server with options (ServerOptions) and waits up to a minute
// until it accepts connections.
func (c Cluster) Start(ctx context.Context, options string) error {
	return c.Ctl(ctx, "-w", "-t", "60", "-l", c.Log, "-o", options, "start")
}

// Stop stops the server in mode (smart, fast or immediate) and waits until it has.
func (c Cluster) Stop(ctx context.Context, mode string) error {
	return c.Ctl(ctx, "-m", mode, "-w", "stop")
}

// Running tells whether a server runs on Data: pg_ctl status exits 3 when none does,
// a stale postmaster.pid included.
func (c Cluster) Running(ctx context.Context) bool {
	_, err := c.Run(ctx, "pg_ctl", "-D", c.Data, "status")
	return err == nil
}

// Ctl runs pg_ctl on Data with args, whose last is pg_ctl's command (start, stop,
// promote). A failure carries pg_ctl's output and the end of the server's log.
func (c Cluster) Ctl(ctx context.Context, args ...string) error {
	out, err := c.Run(ctx, "pg_ctl", append([]string{"-D", c.Data}, args...)...)
	if err != nil {
		return fmt.Errorf("pg_ctl %s in %s: %w\n%s\nlast lines of %s:\n%s",
			args[len(args)-1], c.Data, err, out, c.Log, childproc.Tail(c.Log, 20))
	}
	return nil
}

// ServerOptions are the postgres flags for a server on listen:port with its Unix
// socket in socketDir and each of settings (name=value), as the one string that
// pg_ctl -o hands to /bin/sh.
func ServerOptions(port int, socketDir, listen string, settings ...string) string {
	opts := []string{
		"-p", strconv.Itoa(port),
		"-k", ShellQuote(socketDir),
		"-c", "listen_addresses=" + ShellQuote(listen),
	}
	for _, s := range settings {
		opts = append(opts, "-c", ShellQuote(s))
	}
	return strings.Join(opts, " ")
}

// SocketDir is where a server on port puts its Unix socket: its data directory,
// unless that path is too long for a socket address (108 bytes on Linux, with the file
// name).
func SocketDir(dataDir string, port int) string {
	if len(dataDir)+len("/.s.PGSQL.")+len(strconv.Itoa(port))+len(".lock") < 100 {
		return dataDir
	}
	return os.TempDir()
}
