package devpg

import (
	"strings"
	"testing"
)

func TestServerOptions(t *testing.T) {
	t.Parallel()
	tg := Target{Host: "127.0.0.1", Port: 55432}
	durable := serverOptions(tg, "/data dir", false)
	for _, want := range []string{"-p 55432", "-k '/data dir'", "listen_addresses=127.0.0.1", "max_connections=200"} {
		if !strings.Contains(durable, want) {
			t.Errorf("serverOptions() = %q, want it to contain %q", durable, want)
		}
	}
	if strings.Contains(durable, "fsync") {
		t.Errorf("serverOptions() without DEVPG_FAST = %q, must keep fsync on", durable)
	}
	fast := serverOptions(tg, "/d", true)
	for _, want := range []string{"fsync=off", "synchronous_commit=off", "full_page_writes=off"} {
		if !strings.Contains(fast, want) {
			t.Errorf("serverOptions() with DEVPG_FAST = %q, want it to contain %q", fast, want)
		}
	}
}
