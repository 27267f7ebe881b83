package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
	"github.com/objwatch/callback/internal/testhelper"
)

// setup opens a spool in a fresh directory and closes it at the end of the test.
func setup(t testing.TB) (*Spool, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir)
	return s, dir
}

func open(t testing.TB, dir string) *Spool {
	t.Helper()
	s, err := Open(dir, testhelper.DiscardLogger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// recorder is an apply func that remembers what it was given.
type recorder struct {
	mu       sync.Mutex
	segments []uuid.UUID
	batches  []callback.Batch
	cbs      []callback.Callback // the batches' callbacks, in order
	err      error               // returned instead of recording, when set
}

func (r *recorder) apply(_ context.Context, segment uuid.UUID, batches []callback.Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.segments = append(r.segments, segment)
	r.batches = append(r.batches, batches...)
	for _, b := range batches {
		r.cbs = append(r.cbs, b.Callbacks...)
	}
	return nil
}

func replay(t *testing.T, s *Spool) *recorder {
	t.Helper()
	var r recorder
	n, err := s.Replay(t.Context(), r.apply)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if n != len(r.cbs) {
		t.Fatalf("Replay reported %d callbacks, apply got %d", n, len(r.cbs))
	}
	return &r
}

func mustAppend(t testing.TB, s *Spool, cbs ...callback.Callback) {
	t.Helper()
	if err := s.Append(cbs); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

// clock has microseconds, the precision records keep (version 3).
var clock = time.Date(2026, 11, 25, 12, 0, 0, 123456000, time.UTC)

// batch makes n callbacks naming ids.
func batch(n int, ids ...int64) []callback.Callback {
	cbs := make([]callback.Callback, n)
	for i := range cbs {
		cbs[i] = callback.New(clock.Add(time.Duration(i)*time.Millisecond), ids)
	}
	return cbs
}

// legacyBatch is batch with receipt times to the nanosecond, which versions 1 and 2 kept.
func legacyBatch(n int, ids ...int64) []callback.Callback {
	cbs := batch(n, ids...)
	for i := range cbs {
		cbs[i].ReceivedAt = cbs[i].ReceivedAt.Add(789 * time.Nanosecond)
	}
	return cbs
}

func assertCallbacks(t *testing.T, got, want []callback.Callback) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d callbacks, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || !g.ReceivedAt.Equal(w.ReceivedAt) || !slices.Equal(g.ObjectIDs, w.ObjectIDs) {
			t.Fatalf("callback %d:\n got %v %v %v\nwant %v %v %v", i, g.ID, g.ReceivedAt, g.ObjectIDs, w.ID, w.ReceivedAt, w.ObjectIDs)
		}
		if g.ObjectIDs == nil {
			t.Fatalf("callback %d: ObjectIDs is nil; an empty list must stay an empty array", i)
		}
	}
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	s, dir := setup(t)

	if got := segmentFiles(t, dir); len(got) != 0 {
		t.Fatalf("Open created %v; nothing should exist before the first Append", got)
	}
	var want []callback.Callback
	for _, b := range [][]callback.Callback{
		batch(1, 1, 2, 3),
		batch(3),                         // nil ids
		{callback.New(clock, []int64{})}, // empty, non-nil ids
		batch(2, 0, math.MaxInt64, math.MinInt64, -1, 1<<40, 0),
		batch(1, 7, 7, 7), // repeats are kept
		{{ID: uuid.Must(uuid.NewV7()), ReceivedAt: time.UnixMicro(-1), ObjectIDs: []int64{42}}}, // before 1970
	} {
		mustAppend(t, s, b...)
		want = append(want, b...)
	}
	if err := s.Append(nil); err != nil {
		t.Fatalf("Append(nil): %v", err)
	}
	if got := segmentFiles(t, dir); len(got) != 1 {
		t.Fatalf("segments %v, want one", got)
	}
	for i := range want {
		if want[i].ObjectIDs == nil {
			want[i].ObjectIDs = []int64{}
		}
	}

	r := replay(t, s)
	assertCallbacks(t, r.cbs, want)
	if len(r.segments) != 1 {
		t.Fatalf("apply called for %v, want one segment", r.segments)
	}
	if got := segmentFiles(t, dir); len(got) != 0 {
		t.Fatalf("segments left after replay: %v", got)
	}
	if r := replay(t, s); len(r.segments) != 0 {
		t.Fatalf("second replay applied %v", r.segments)
	}
}

// Records keep receipt times to the microsecond, as the inbox does: finer is dropped.
func TestRoundTrip_keepsMicroseconds(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	cb := callback.New(clock.Add(999*time.Nanosecond), []int64{1})
	mustAppend(t, s, cb)
	cb.ReceivedAt = clock
	assertCallbacks(t, replay(t, s).cbs, []callback.Callback{cb})
}

func TestAppendBatch_replaysEachBatchUnderItsID(t *testing.T) {
	t.Parallel()
	s, _ := setup(t)
	first, second := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	a, b := batch(3, 1, 2), batch(1, 9)
	if err := s.AppendBatch(first, a); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendBatch(second, b); err != nil {
		t.Fatal(err)
	}
	r := replay(t, s)
	if len(r.batches) != 2 || r.batches[0].ID != first || r.batches[1].ID != second {
		t.Fatalf("replayed batches %v, want %v then %v", r.batches, first, second)
	}
	assertCallbacks(t, r.batches[0].Callbacks, a)
	assertCallbacks(t, r.batches[1].Callbacks, b)
}

// A segment written before batches had ids (version 1: one callback per record) is
// still replayed, as one batch without an id, up to a torn tail as always.
func TestReplay_versionOneSegment(t *testing.T) {
	t.Parallel()
	s, dir := setup(t)
	cbs := legacyBatch(3, 4, 5)
	data := append([]byte(nil), headerV1[:]...)
	for i := range cbs {
		data = appendRecordV1(data, &cbs[i])
	}
	torn := appendRecordV1(nil, &legacyBatch(1, 6)[0])
	data = append(data, torn[:len(torn)-2]...)
	path := filepath.Join(dir, uuid.Must(uuid.NewV7()).String()+segmentExt)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	r := replay(t, s)
	if len(r.batches) != 1 || r.batches[0].ID != uuid.Nil {
		t.Fatalf("replayed batches %v, want one without an id", r.batches)
	}
	assertCallbacks(t, r.cbs, cbs)
	if files := segmentFiles(t, dir); len(files) != 0 {
		t.Fatalf("segments after replay: %v", files)
	}
}

// A segment written before callbacks had the inbox's encoding (version 2) is still
// replayed, each batch under its id, with receipt times to the nanosecond, up to a
// torn tail as always.
func TestReplay_versionTwoSegment(t *testing.T) {
	t.Parallel()
	s, dir := setup(t)
	first, second := uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())
	a, b := legacyBatch(3, 4, 5), legacyBatch(1)
	data := append([]byte(nil), headerV2[:]...)
	data = appendRecordV2(data, first, a)
	data = appendRecordV2(data, second, b)
	torn := appendRecordV2(nil, uuid.Must(uuid.NewV7()), legacyBatch(2, 6))
	data = append(data, torn[:len(torn)-2]...)
	path := filepath.Join(dir, uuid.Must(uuid.NewV7()).String()+segmentExt)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	r := replay(t, s)
	if len(r.batches) != 2 || r.batches[0].ID != first || r.batches[1].ID != second {
		t.Fatalf("replayed batches %v, want %v then %v", r.batches, first, second)
	}
	assertCallbacks(t, r.batches[0].Callbacks, a)
	assertCallbacks(t, r.batches[1].Callbacks, b)
	if files := segmentFiles(t, dir); len(files) != 0 {
		t.Fatalf("segments after replay: %v", files)
	}
}

// During a rolling upgrade a replica of the previous version, sharing the directory,
// sets a version 3 segment aside as unreadable; this version takes it back. A file
// that is really unreadable stays aside.
func TestReplay_segmentSetAsideByAnOlderVersion(t *testing.T) {
	t.Parallel()
	s, dir := setup(t)
	cbs := batch(2, 8)
	path := writeSegment(t, dir, cbs)
	aside := strings.TrimSuffix(path, segmentExt) + corruptExt
	if err := os.Rename(path, aside); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, uuid.Must(uuid.NewV7()).String()+corruptExt)
	if err := os.WriteFile(garbage, []byte("OWSPOOL\x09 from the future"), 0o600); err != nil {
		t.Fatal(err)
	}

	r := replay(t, s)
	assertCallbacks(t, r.cbs, cbs)
	if _, err := os.Stat(aside); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the set-aside segment is still there: %v", err)
	}
	if _, err := os.Stat(garbage); err != nil {
		t.Fatalf("an unreadable file was not kept aside: %v", err)
	}
}

func TestAppend(t *testing.T) {
	t.Parallel()

	t.Run("concurrent callers all land, once each", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		const goroutines, batches = 16, 25
		var wg sync.WaitGroup
		sent := make(chan callback.Callback, goroutines*batches*3)
		for g := range goroutines {
			wg.Go(func() {
				for i := range batches {
					b := make([]callback.Callback, 3)
					for j := range b {
						b[j] = callback.New(clock, []int64{int64(g), int64(i), int64(j)})
						sent <- b[j]
					}
					if err := s.Append(b); err != nil {
						t.Errorf("Append: %v", err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(sent)

		r := replay(t, s)
		got := map[uuid.UUID][]int64{}
		for _, cb := range r.cbs {
			if _, dup := got[cb.ID]; dup {
				t.Fatalf("callback %s replayed twice", cb.ID)
			}
			got[cb.ID] = cb.ObjectIDs
		}
		n := 0
		for cb := range sent {
			n++
			if ids, ok := got[cb.ID]; !ok || !slices.Equal(ids, cb.ObjectIDs) {
				t.Fatalf("callback %s: got %v (present %v), want %v", cb.ID, ids, ok, cb.ObjectIDs)
			}
		}
		if len(got) != n {
			t.Fatalf("replayed %d callbacks, sent %d", len(got), n)
		}
	})

	t.Run("rotates full segments and replays them in order", func(t *testing.T) {
		t.Parallel()
		s, dir := setup(t)
		s.maxSegmentBytes = 256
		var want []callback.Callback
		for range 20 {
			b := batch(2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
			mustAppend(t, s, b...)
			want = append(want, b...)
		}
		if n := len(segmentFiles(t, dir)); n < 3 {
			t.Fatalf("%d segments, want several", n)
		}
		r := replay(t, s)
		assertCallbacks(t, r.cbs, want)
		if !slices.IsSortedFunc(r.segments, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }) {
			t.Fatalf("segments not replayed oldest first: %v", r.segments)
		}
	})

	t.Run("after Replay goes to a new segment", func(t *testing.T) {
		t.Parallel()
		s, dir := setup(t)
		first := batch(2, 1)
		mustAppend(t, s, first...)
		r := replay(t, s)
		assertCallbacks(t, r.cbs, first)

		second := batch(2, 2)
		mustAppend(t, s, second...)
		files := segmentFiles(t, dir)
		if len(files) != 1 || strings.Contains(files[0], r.segments[0].String()) {
			t.Fatalf("segments after Replay and Append: %v; replayed %v", files, r.segments)
		}
		r2 := replay(t, s)
		assertCallbacks(t, r2.cbs, second)
		if r2.segments[0] == r.segments[0] {
			t.Fatalf("second batch went to the replayed segment %v", r.segments[0])
		}
	})

	t.Run("fails when the directory is gone", func(t *testing.T) {
		t.Parallel()
		// Works as root too: a regular file where the directory was makes creating a
		// segment fail with ENOTDIR whatever the permissions.
		s, dir := setup(t)
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.Append(batch(1, 1)); err == nil {
			t.Fatal("Append succeeded without a directory")
		}
	})

	t.Run("fails in a read-only directory", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() == 0 {
			t.Skip("root ignores directory permissions; the test above covers root")
		}
		s, dir := setup(t)
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		if err := s.Append(batch(1, 1)); err == nil {
			t.Fatal("Append succeeded in a read-only directory")
		}
	})

	t.Run("fails when the disk is full, and seals the torn segment", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		before := batch(3, 1, 2)
		mustAppend(t, s, before...)

		// The kernel wrote part of the buffer, then ran out of space.
		s.write = func(f *os.File, b []byte) (int, error) {
			n, _ := f.Write(b[:len(b)/2])
			return n, syscall.ENOSPC
		}
		err := s.Append(batch(1, 3, 4, 5, 6))
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Append with a failing write: %v, want ENOSPC", err)
		}
		s.mu.Lock()
		sealed := s.active == nil
		s.mu.Unlock()
		if !sealed {
			t.Fatal("segment still active after a failed write")
		}

		s.write = (*os.File).Write
		after := batch(2, 7)
		mustAppend(t, s, after...)

		r := replay(t, s)
		assertCallbacks(t, r.cbs, append(before, after...))
		if len(r.segments) != 2 {
			t.Fatalf("replayed segments %v, want the torn one and a new one", r.segments)
		}
	})

	t.Run("fails when fsync fails, and seals the segment", func(t *testing.T) {
		t.Parallel()
		s, dir := setup(t)
		mustAppend(t, s, batch(1, 1)...)
		s.sync = func(int) error { return syscall.EIO }
		if err := s.Append(batch(1, 2)); !errors.Is(err, syscall.EIO) {
			t.Fatalf("Append with a failing fsync: %v, want EIO", err)
		}
		s.sync = syscall.Fdatasync
		mustAppend(t, s, batch(1, 3)...)
		if n := len(segmentFiles(t, dir)); n != 2 {
			t.Fatalf("%d segments, want 2: no record may follow a failed fsync in one file", n)
		}
	})

	t.Run("fails after Close", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		mustAppend(t, s, batch(1, 1)...)
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := s.Append(batch(1, 1)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close: %v, want ErrClosed", err)
		}
		if _, err := s.Replay(t.Context(), (&recorder{}).apply); !errors.Is(err, ErrClosed) {
			t.Fatalf("Replay after Close: %v, want ErrClosed", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// writeSegment appends cbs to a fresh spool in dir and closes it, leaving one sealed
// segment; it returns the segment's path.
// writeSegment writes a sealed segment holding cbs, one batch (so one record) each.
func writeSegment(t *testing.T, dir string, cbs []callback.Callback) string {
	t.Helper()
	s := open(t, dir)
	for _, cb := range cbs {
		mustAppend(t, s, cb)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files := segmentFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("segments %v, want one", files)
	}
	return files[0]
}

func TestReplay(t *testing.T) {
	t.Parallel()

	// Every way a tail can be damaged: the good prefix is replayed and the file removed.
	for name, damage := range map[string]func(t *testing.T, path string, lastRecord int64){
		"record header cut": func(t *testing.T, path string, last int64) {
			truncate(t, path, last+3)
		},
		"payload cut": func(t *testing.T, path string, last int64) {
			truncate(t, path, last+recordHeaderSize+10)
		},
		"one byte missing": func(t *testing.T, path string, last int64) {
			info, _ := os.Stat(path)
			truncate(t, path, info.Size()-1)
		},
		"garbage appended": func(t *testing.T, path string, _ int64) {
			appendBytes(t, path, []byte("\x20\x00\x00\x00garbage that is not a record at all"))
		},
		"zeros appended": func(t *testing.T, path string, _ int64) {
			appendBytes(t, path, make([]byte, 4096))
		},
	} {
		t.Run("torn tail: "+name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cbs := batch(4, 1, 2, 3)
			path := writeSegment(t, dir, cbs)
			want := cbs
			last := recordOffset(t, path, 3)
			if name != "garbage appended" && name != "zeros appended" {
				want = cbs[:3]
			}
			damage(t, path, last)

			r := replay(t, open(t, dir))
			assertCallbacks(t, r.cbs, want)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("segment not removed after replay: %v", err)
			}
		})
	}

	t.Run("corrupt checksum stops at that record", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		cbs := batch(5, 10, 20)
		path := writeSegment(t, dir, cbs)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		off := recordOffset(t, path, 2)
		data[off+recordHeaderSize+33] ^= 0x01 // a bit of the third record's receivedAt
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		r := replay(t, open(t, dir))
		assertCallbacks(t, r.cbs, cbs[:2])
	})

	t.Run("apply error keeps the segment for the next replay", func(t *testing.T) {
		t.Parallel()
		s, dir := setup(t)
		cbs := batch(3, 1)
		mustAppend(t, s, cbs...)

		boom := errors.New("database unreachable")
		failing := &recorder{err: boom}
		n, err := s.Replay(t.Context(), failing.apply)
		if !errors.Is(err, boom) || n != 0 {
			t.Fatalf("Replay = %d, %v; want 0, %v", n, err, boom)
		}
		if files := segmentFiles(t, dir); len(files) != 1 {
			t.Fatalf("segments after failed replay: %v", files)
		}
		r := replay(t, s)
		assertCallbacks(t, r.cbs, cbs)
		if files := segmentFiles(t, dir); len(files) != 0 {
			t.Fatalf("segments after replay: %v", files)
		}
	})

	// One segment whose replay fails (a statement over its deadline, a row Postgres
	// refuses) used to stop the replay there: the spool never drained past it.
	t.Run("an apply error does not hold back the next segments", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		s.maxSegmentBytes = 1 // every batch its own segment
		first, second := batch(1, 1), batch(1, 2)
		mustAppend(t, s, first...)
		mustAppend(t, s, second...)
		var applied [][]callback.Callback
		_, err := s.Replay(t.Context(), func(_ context.Context, _ uuid.UUID, batches []callback.Batch) error {
			applied = append(applied, batches[0].Callbacks)
			if len(applied) == 1 {
				return errors.New("boom")
			}
			return nil
		})
		if err == nil || len(applied) != 2 {
			t.Fatalf("Replay: err %v after %d applies; want an error after 2", err, len(applied))
		}
		assertCallbacks(t, applied[0], first) // oldest first
		r := replay(t, s)
		assertCallbacks(t, r.cbs, first)
	})

	t.Run("ErrStop ends the replay at that segment", func(t *testing.T) {
		t.Parallel()
		s, _ := setup(t)
		s.maxSegmentBytes = 1
		first, second := batch(1, 1), batch(1, 2)
		mustAppend(t, s, first...)
		mustAppend(t, s, second...)
		calls := 0
		_, err := s.Replay(t.Context(), func(context.Context, uuid.UUID, []callback.Batch) error {
			calls++
			return fmt.Errorf("%w: the database is gone", ErrStop)
		})
		if !errors.Is(err, ErrStop) || calls != 1 {
			t.Fatalf("Replay: err %v after %d applies; want ErrStop after 1", err, calls)
		}
		r := replay(t, s)
		assertCallbacks(t, r.cbs, append(first, second...))
	})

	t.Run("flock conflicts between two opens of one file", func(t *testing.T) {
		t.Parallel()
		// What the next test relies on to stand for another process.
		path := filepath.Join(t.TempDir(), "f")
		a, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		if err := flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Fatalf("second flock: %v, want EWOULDBLOCK", err)
		}
	})

	t.Run("skips a segment another spool is appending to", func(t *testing.T) {
		t.Parallel()
		writer, dir := setup(t)
		cbs := batch(2, 1)
		mustAppend(t, writer, cbs...)

		replayer := open(t, dir)
		if r := replay(t, replayer); len(r.segments) != 0 {
			t.Fatalf("replayed %v, a segment locked by a live spool", r.segments)
		}
		if files := segmentFiles(t, dir); len(files) != 1 {
			t.Fatalf("segments %v, want the writer's", files)
		}
		if err := writer.Close(); err != nil {
			t.Fatal(err)
		}
		assertCallbacks(t, replay(t, replayer).cbs, cbs)
	})

	t.Run("replicas replaying at once apply each segment once", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		const replicas = 4
		spools := make([]*Spool, replicas)
		var want []callback.Callback
		for i := range spools {
			spools[i] = open(t, dir)
			spools[i].maxSegmentBytes = 1
			for range 10 {
				b := batch(2, int64(i))
				mustAppend(t, spools[i], b...)
				want = append(want, b...)
			}
		}
		var r recorder
		var wg sync.WaitGroup
		for _, s := range spools {
			wg.Go(func() {
				if _, err := s.Replay(t.Context(), r.apply); err != nil {
					t.Errorf("Replay: %v", err)
				}
			})
		}
		wg.Wait()
		seen := map[uuid.UUID]bool{}
		for _, id := range r.segments {
			if seen[id] {
				t.Fatalf("segment %s applied twice", id)
			}
			seen[id] = true
		}
		if len(r.segments) != replicas*10 {
			t.Fatalf("applied %d segments, want %d", len(r.segments), replicas*10)
		}
		got := map[uuid.UUID]bool{}
		for _, cb := range r.cbs {
			got[cb.ID] = true
		}
		for _, cb := range want {
			if !got[cb.ID] {
				t.Fatalf("callback %s not replayed", cb.ID)
			}
		}
	})

	t.Run("cleans up what crashes leave behind", func(t *testing.T) {
		t.Parallel()
		s, dir := setup(t)
		write := func(name string, data []byte) string {
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			return path
		}
		id := func() string { return uuid.Must(uuid.NewV7()).String() }
		// Crash after the rename, before the header reached the disk.
		empty := write(id()+segmentExt, nil)
		halfHeader := write(id()+segmentExt, header[:3])
		// Crash between creating and renaming, long ago, and just now.
		staleTmp := write(id()+tmpExt, header[:])
		old := time.Now().Add(-2 * staleTmpAge)
		if err := os.Chtimes(staleTmp, old, old); err != nil {
			t.Fatal(err)
		}
		freshTmp := write(id()+tmpExt, header[:])
		// Not ours: kept, but out of the way.
		foreignID := id()
		write(foreignID+segmentExt, []byte("something else entirely"))
		// Not a segment name at all.
		write("notes.txt", []byte("hello"))

		if r := replay(t, s); len(r.segments) != 0 {
			t.Fatalf("applied %v; none of these hold records", r.segments)
		}
		for _, gone := range []string{empty, halfHeader, staleTmp} {
			if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: still there (%v)", filepath.Base(gone), err)
			}
		}
		for _, kept := range []string{freshTmp, filepath.Join(dir, foreignID+corruptExt), filepath.Join(dir, "notes.txt")} {
			if _, err := os.Stat(kept); err != nil {
				t.Errorf("%s: %v", filepath.Base(kept), err)
			}
		}
		if files := segmentFiles(t, dir); len(files) != 0 {
			t.Fatalf("segments left: %v", files)
		}
	})
}

// TestReplay_deadProcess appends from a real child process, checks that its segment is
// left alone while it lives, kills it with SIGKILL and replays what it acknowledged.
//
// Not parallel: between fork and exec the child holds a copy of every descriptor of
// this process, and with it the flock of another test's just-sealed segment, which that
// test's Replay then finds locked and skips ("got 0 callbacks, want 1" in
// TestRoundTrip_keepsMicroseconds, seen with a CPU hog beside make test). The service
// itself starts no processes, and its replayer would retry such a segment anyway.
func TestReplay_deadProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "SPOOL_HELPER_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	// The child prints the id of each callback it appended, then "ready" and waits.
	var acked []uuid.UUID
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		acked = append(acked, uuid.MustParse(sc.Text()))
	}
	if len(acked) == 0 {
		t.Fatalf("child acknowledged nothing (%v)", sc.Err())
	}

	s := open(t, dir)
	if r := replay(t, s); len(r.segments) != 0 {
		t.Fatalf("replayed %v, the live child's active segment", r.segments)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	io.Copy(io.Discard, stdout)

	r := replay(t, s)
	var got []uuid.UUID
	for _, cb := range r.cbs {
		got = append(got, cb.ID)
	}
	if !slices.Equal(got, acked) {
		t.Fatalf("replayed %v, child acknowledged %v", got, acked)
	}
}

// TestHelperProcess is the child of TestReplay_deadProcess, not a test.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("SPOOL_HELPER_DIR")
	if dir == "" {
		t.Skip("run by TestReplay_deadProcess")
	}
	s, err := Open(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for range 5 {
		b := batch(3, 1, 2, 3)
		if err := s.Append(b); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, cb := range b {
			fmt.Println(cb.ID)
		}
	}
	fmt.Println("ready")
	select {} // until killed
}

func TestStats(t *testing.T) {
	t.Parallel()
	s, dir := setup(t)
	if n, size := s.Stats(); n != 0 || size != 0 {
		t.Fatalf("Stats of an empty spool = %d, %d", n, size)
	}
	other := open(t, dir)
	mustAppend(t, s, batch(3, 1, 2)...)
	mustAppend(t, other, batch(2, 3)...)

	var want int64
	for _, f := range segmentFiles(t, dir) {
		info, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		want += info.Size()
	}
	if n, size := s.Stats(); n != 2 || size != want {
		t.Fatalf("Stats = %d segments, %d bytes; want 2, %d", n, size, want)
	}
	other.Close()
	// A test of this package that forks a child (TestReplay_deadProcess) may hold a copy
	// of other's descriptor, and so its lock, until the child execs: replay until the
	// segments are taken.
	testhelper.Eventually(t, 10*time.Second, "Stats is 0, 0 after replay", func() bool {
		replay(t, s)
		n, size := s.Stats()
		return n == 0 && size == 0
	})
}

func TestOpen(t *testing.T) {
	t.Parallel()

	t.Run("creates missing directories private", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "a", "b", "spool")
		open(t, dir)
		info, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			t.Fatalf("directory mode %v, want no access for others", perm)
		}
	})

	t.Run("fails when the path is a file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path, nil); err == nil {
			t.Fatal("Open succeeded on a regular file")
		}
	})
}

// FuzzDecodeSegment checks that no file content makes replay panic or return records
// that do not round-trip.
func FuzzDecodeSegment(f *testing.F) {
	var buf []byte
	buf = append(buf, header[:]...)
	buf, _ = appendRecord(buf, uuid.Must(uuid.NewV7()), batch(3, 1, -5, math.MaxInt64))
	buf, _ = appendRecord(buf, uuid.Must(uuid.NewV7()), batch(1))
	f.Add(buf)
	f.Add(buf[:len(buf)-3])
	f.Add(header[:])
	f.Add([]byte{})
	var v1 []byte
	v1 = append(v1, headerV1[:]...)
	for _, cb := range legacyBatch(3, 1, -5, math.MaxInt64) {
		v1 = appendRecordV1(v1, &cb)
	}
	f.Add(v1)
	f.Add(v1[:len(v1)-3])
	var v2 []byte
	v2 = append(v2, headerV2[:]...)
	v2 = appendRecordV2(v2, uuid.Must(uuid.NewV7()), legacyBatch(3, 1, -5, math.MaxInt64))
	v2 = appendRecordV2(v2, uuid.Must(uuid.NewV7()), legacyBatch(1))
	f.Add(v2)
	f.Add(v2[:len(v2)-3])
	f.Fuzz(func(t *testing.T, data []byte) {
		batches, good, err := decodeSegment(data)
		if err != nil {
			return
		}
		if good > len(data) {
			t.Fatalf("good %d > len %d", good, len(data))
		}
		var again []byte
		if len(batches) > 0 {
			again = append(again, data[:headerSize]...)
		}
		for _, b := range batches {
			switch version := data[headerSize-1]; {
			case version == 1 && b.ID == uuid.Nil:
				for i := range b.Callbacks {
					again = appendRecordV1(again, &b.Callbacks[i])
				}
			case version == 2:
				again = appendRecordV2(again, b.ID, b.Callbacks)
			default:
				again, _ = appendRecord(again, b.ID, b.Callbacks)
			}
		}
		if len(batches) > 0 && !bytes.Equal(again, data[:good]) {
			t.Fatalf("records do not re-encode to the bytes they came from")
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	s, _ := setup(b)
	ids := make([]int64, 200)
	for i := range ids {
		ids[i] = 1_000_000 + int64(i)*37
	}
	cbs := batch(16, ids...)
	buf, _ := appendRecord(nil, uuid.Nil, cbs)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(cbs); err != nil {
			b.Fatal(err)
		}
	}
}

// recordOffset returns the offset of record i (from 0) in the segment at path.
func recordOffset(t *testing.T, path string, i int) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(headerSize)
	for range i {
		off += recordHeaderSize + int64(uint32(data[off])|uint32(data[off+1])<<8|uint32(data[off+2])<<16|uint32(data[off+3])<<24)
	}
	return off
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// The encoders of the earlier versions, which only these tests still write (legacy.go
// reads them).

// appendRecordV2 appends the version 2 record of the batch cbs, with id batchID.
func appendRecordV2(buf []byte, batchID uuid.UUID, cbs []callback.Callback) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, recordHeaderSize)...)
	buf = append(buf, batchID[:]...)
	buf = binary.AppendUvarint(buf, uint64(len(cbs)))
	for i := range cbs {
		buf = appendCallbackV1(buf, &cbs[i])
	}
	sealRecord(buf[start:])
	return buf
}

// appendRecordV1 appends cb as a version 1 record (one callback, no batch id), as
// segments were written before batches had ids.
func appendRecordV1(buf []byte, cb *callback.Callback) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, recordHeaderSize)...)
	buf = appendCallbackV1(buf, cb)
	sealRecord(buf[start:])
	return buf
}

// appendCallbackV1 appends one callback as records of versions 1 and 2 hold it.
func appendCallbackV1(buf []byte, cb *callback.Callback) []byte {
	buf = append(buf, cb.ID[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(cb.ReceivedAt.UnixNano()))
	buf = binary.AppendUvarint(buf, uint64(len(cb.ObjectIDs)))
	for _, id := range cb.ObjectIDs {
		buf = binary.AppendVarint(buf, id)
	}
	return buf
}
