package devpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClusterVersion is the major version that made the cluster in dir ("": none there).
func ClusterVersion(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// IsCluster tells whether dir holds an initialised cluster.
func IsCluster(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// Runner runs the server programs: as this user, or, when this is root (initdb and
// pg_ctl refuse to run as root), as the postgres user.
type Runner struct {
	cred *syscall.Credential // nil: run as ourselves
}

func CurrentRunner() (Runner, error) {
	if os.Geteuid() != 0 {
		return Runner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return Runner{}, fmt.Errorf("running as root, and initdb and pg_ctl refuse root: need the postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Runner{}, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return Runner{}, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return Runner{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// run runs a program in dir and returns its combined output. pg_ctl's server
// redirects all three standard streams to the log file, so Wait does not hang on it.
func (r Runner) Run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
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
func (r Runner) TakeDir(ctx context.Context, dir string) error {
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
	if !IsCluster(dir) {
		if err := os.Chown(dir, int(r.cred.Uid), int(r.cred.Gid)); err != nil {
			return fmt.Errorf("handing %s to the postgres user: %w", dir, err)
		}
	}
	if _, err := r.Run(ctx, "/", "/bin/sh", "-c", `test -r "$1" && test -w "$1" && test -x "$1"`, "sh", dir); err != nil {
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

// ShellQuote quotes s for /bin/sh when it has anything but safe characters.
func ShellQuote(s string) string {
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
