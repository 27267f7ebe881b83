package devpg

import "testing"

func TestServerOptionsQuotesForTheShell(t *testing.T) {
	t.Parallel()
	got := ServerOptions(55432, "/tmp/a dir", "127.0.0.1", "fsync=off", "synchronous_standby_names=*")
	want := "-p 55432 -k '/tmp/a dir' -c listen_addresses=127.0.0.1 -c fsync=off -c 'synchronous_standby_names=*'"
	if got != want {
		t.Errorf("ServerOptions() = %q, want %q", got, want)
	}
}

func TestSocketDir(t *testing.T) {
	t.Parallel()
	if got := SocketDir("/tmp/data", 5432); got != "/tmp/data" {
		t.Errorf("SocketDir(short) = %q, want the data directory", got)
	}
	long := "/" + string(make([]byte, 100))
	if got := SocketDir(long, 5432); got == long {
		t.Errorf("SocketDir(a %d-byte path) is the path itself, too long for a socket address", len(long))
	}
}
