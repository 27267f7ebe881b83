// Package childproc runs a program as a child process the way the benchmark
// (cmd/bench) and the fault tests need it: the child dies with its parent, its output
// goes to a log file whose last lines tell why it failed, it is stopped with SIGTERM
// (SIGKILL when it does not go), and its Prometheus /metrics can be read.
package childproc

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a started child process.
type Proc struct {
	Cmd *exec.Cmd
	Log string // the log file's path

	done chan struct{}
	err  error // Wait's, once done is closed
}

// Start starts cmd with its stderr, and its stdout unless the caller has set that
// (say to a pipe), going to a new file at logPath.
//
// The child gets SIGKILL when this process dies, even when it crashes or is killed
// itself, so that no stray child outlives it: a panic in a test once left three
// services running, retrying against dropped databases, and a child left by an
// interrupted benchmark would skew the next measurement.
func Start(cmd *exec.Cmd, logPath string) (*Proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = f
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	p := &Proc{Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is what Wait returned: nil for exit status 0. Only meaningful once Done is
// closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits for the process to exit, gracefully or, after grace,
// killed with SIGKILL.
func (p *Proc) Stop(grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill sends SIGKILL, unless the process has exited already, and waits until it has.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Tail is the last n lines of the process's log.
func (p *Proc) Tail(n int) string { return Tail(p.Log, n) }

// Tail is the last n lines of the file at path, or why it cannot be read, for a
// message about a process that failed.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return LastLines(string(b), n)
}

// LastLines is the last n lines of text (a log).
func LastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
