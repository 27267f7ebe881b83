// Package devpg runs throwaway PostgreSQL clusters from the server binaries installed
// on this machine: cmd/devpg's for `make run` and `make test`, and the fault tests'
// crashed, restarted, replicated and promoted servers. It finds the binaries, and runs
// them as the postgres user when this process is root (initdb and pg_ctl refuse root).
package devpg
