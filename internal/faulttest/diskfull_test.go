package faulttest

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/objwatch/callback/internal/tester"
	"github.com/objwatch/callback/internal/testhelper"
)

// TestSpoolDiskFull fills the spool's file system (a real ENOSPC, on a small tmpfs)
// while Postgres is down, under load. What cannot be made durable is answered 503, never
// 2xx; no segment is left corrupt (everything acknowledged before, during and after is
// replayed); and once space returns, the spool takes callbacks again, and everything is
// replayed once Postgres is back.
func TestSpoolDiskFull(t *testing.T) {
	t.Parallel()
	fs := mountTmpfs(t, "4m")
	tb := setup(t, setupOpts{objects: fastObjects(13), proxy: true})
	e := tb.env.with("SPOOL_DIR", filepath.Join(fs, "spool"))
	s := startInproc(t, e)
	l := sendLoad(t, s.base, 13, 2000, 200)

	sleep(time.Second)
	tb.proxy.Refuse()
	sleep(time.Second)
	if n := metric(t, s.base, "callback_callbacks_spooled_total"); n == 0 {
		t.Fatal("nothing was spooled with Postgres down")
	}

	filler := filepath.Join(fs, "filler")
	fill(t, filler)
	before := l.s.Stats()
	sleep(2 * time.Second)
	full := l.s.Stats()
	// By status only: a snapshot's total and its map are not read at one instant.
	refused503, other := int64(0), int64(0)
	for code, n := range full.RefusedBy {
		if code == http.StatusServiceUnavailable {
			refused503 += n - before.RefusedBy[code]
		} else {
			other += n - before.RefusedBy[code]
		}
	}
	t.Logf("with the spool's disk full: %d accepted (fitted in pages already allocated), %d refused with 503, %d refused otherwise, %d failed",
		full.Accepted-before.Accepted, refused503, other, full.Failed-before.Failed)
	if refused503 == 0 {
		t.Errorf("no callback was refused with 503 while neither Postgres nor the spool could take it")
	}
	if other != 0 {
		t.Errorf("%d callbacks were refused with another status than 503: %v", other, full.RefusedBy)
	}
	if code := get(t, s.base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Logf("/readyz answered %d with the disk full (it probes by creating a file, which an inode may still allow)", code)
	}

	// Space returns: the spool takes callbacks again, Postgres still down.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	spooled := metric(t, s.base, "callback_callbacks_spooled_total")
	testhelper.Eventually(t, 5*time.Second, "callbacks are spooled and accepted again once space returns", func() bool {
		return l.s.Stats().Accepted > full.Accepted+50 && metric(t, s.base, "callback_callbacks_spooled_total") > spooled
	})
	if err := tb.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	sleep(time.Second)
	l.Stop()
	t.Logf("sender: %+v", l.s.Stats())

	testhelper.Eventually(t, 20*time.Second, "the spool is replayed and emptied", func() bool {
		return len(spoolSegments(t, e["SPOOL_DIR"])) == 0
	})
	if corrupt, _ := filepath.Glob(filepath.Join(e["SPOOL_DIR"], "*.corrupt")); len(corrupt) > 0 {
		t.Errorf("segments moved aside as unreadable: %v", corrupt)
	}
	verifyTable(t, tb.pool, l.s.Records(), tester.OnlineParity, e.duration(t, "EXPIRE_AFTER"), 20*time.Second, lateSlack(l.s.Stats()))
	testhelper.Eventually(t, 10*time.Second, "inbox and pending drain", func() bool { return queued(t, tb.pool) == 0 })
}

// mountTmpfs mounts a tmpfs of size (e.g. "4m") on a fresh directory for the test, and
// skips the test where mounting is not permitted (not root, or no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			t.Skipf("cannot mount a tmpfs to fill up (%v): this test needs root with CAP_SYS_ADMIN", err)
		}
		t.Fatalf("mounting a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// fill writes path until its file system is full, and fails unless that ends in ENOSPC.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s ended with %v, want ENOSPC", path, err)
	}
}
