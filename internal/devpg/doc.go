// Package devpg runs throwaway PostgreSQL clusters from the server binaries installed
// on this machine: the one cmd/devpg keeps at DATABASE_URL for `make run` and `make
// test` (Ensure, Stop), and the fault tests' crashed, restarted, replicated and
// promoted servers (Cluster). It finds the binaries (DiscoverBinDir), and runs them as
// the postgres user when this process is root (initdb and pg_ctl refuse root).
package devpg
