package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// What a process holds in a spool directory, for the fleet's low watermark
// (internal/watermark): the receipts it has acknowledged that are not in the database.
//
// Every segment in the directory is held by exactly one live process, or by none:
//   - the active segment of a process, locked by it: that process's;
//   - a segment being replayed, locked by its replayer: that process's until the replay
//     committed (the callbacks are then in the inbox, where expiry sees them);
//   - a sealed segment nobody has locked (sealed by a live process, or left by a dead
//     one): every process on the directory counts it, since any of them may replay it.
//
// A process that cannot reach Postgres holds its segments and publishes nothing; the
// others on its host count the unlocked ones, and the fleet waits for its silence to
// pass a bound (REPLICA_TIMEOUT). Set-aside segments (.spool.corrupt) are held by
// nobody: they wait for a human, and must not stop expiry for good.

// hostIDFile names the random id of a spool directory: with a slot, the replica's
// identity (ReplicaID), the same across restarts on the same directory.
const hostIDFile = "host.id"

// slotPrefix names the lock files of the slots: one per process sharing the directory.
const slotPrefix = "replica-"

// OldestHeld is the oldest receipt among the callbacks this process holds in the
// spool (see above), and false if it holds none. A segment being replayed whose receipts
// are not read yet counts as floor: the caller's bound below which receipts cannot
// matter (the window's edge).
func (s *Spool) OldestHeld(floor time.Time) (time.Time, bool) {
	var oldest time.Time
	take := func(t time.Time) {
		if t.IsZero() || t.Before(floor) {
			t = floor
		}
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	s.mu.Lock()
	if s.active != nil && !s.active.oldest.IsZero() {
		take(s.active.oldest)
	}
	var mine []uuid.UUID
	if s.active != nil {
		mine = append(mine, s.active.id)
	}
	for id, t := range s.replaying {
		take(t)
		mine = append(mine, id)
	}
	s.mu.Unlock()

	entries, err := os.ReadDir(s.dir)
	if err != nil {
		// Not knowing is holding: nothing past floor may be expired.
		s.logger.Warn("listing spool directory", "dir", s.dir, "error", err)
		return floor, true
	}
	seen := make(map[uuid.UUID]bool, len(entries))
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segmentExt) {
			continue
		}
		id, err := uuid.Parse(strings.TrimSuffix(name, segmentExt))
		if err != nil || contains(mine, id) {
			continue
		}
		seen[id] = true
		t, held, err := s.unlockedOldest(id)
		switch {
		case err != nil:
			s.logger.Warn("reading a spool segment's oldest receipt", "segment", id, "error", err)
			take(floor)
		case held:
			take(t)
		}
	}
	// Forget what was read of segments that are gone.
	s.mu.Lock()
	for id := range s.sealedOldest {
		if !seen[id] {
			delete(s.sealedOldest, id)
		}
	}
	s.mu.Unlock()
	return oldest, !oldest.IsZero()
}

// unlockedOldest reads the oldest receipt of a segment that no live process holds, once
// (a sealed segment never changes). held is false if the segment is locked (another
// process's) or gone.
func (s *Spool) unlockedOldest(id uuid.UUID) (oldest time.Time, held bool, err error) {
	path := filepath.Join(s.dir, id.String()+segmentExt)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	defer f.Close()
	if err := flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return time.Time{}, false, nil
		}
		return time.Time{}, false, err
	}
	s.mu.Lock()
	t, known := s.sealedOldest[id]
	s.mu.Unlock()
	if known {
		return t, true, nil
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return time.Time{}, false, err
	}
	batches, _, err := decodeSegment(data)
	if err != nil {
		return time.Time{}, false, nil // set aside by the next Replay: held by nobody
	}
	for _, b := range batches {
		for _, cb := range b.Callbacks {
			if oldest.IsZero() || cb.ReceivedAt.Before(oldest) {
				oldest = cb.ReceivedAt
			}
		}
	}
	if oldest.IsZero() {
		return time.Time{}, false, nil // no callbacks: holds nothing
	}
	s.mu.Lock()
	s.sealedOldest[id] = oldest
	s.mu.Unlock()
	return oldest, true, nil
}

func contains(ids []uuid.UUID, id uuid.UUID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// ReplicaID takes a slot in the directory for this process, for as long as the spool is
// open, and returns the identity it names: the directory's id (created once, kept in
// the directory) and the slot. A process restarted on the directory takes the lowest
// free slot, most likely its old one, and so its old identity. Calling it again
// returns the same identity.
func (s *Spool) ReplicaID() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slot != nil {
		return s.replicaID, nil
	}
	host, err := s.hostID()
	if err != nil {
		return "", err
	}
	for n := 0; ; n++ {
		f, err := os.OpenFile(filepath.Join(s.dir, slotPrefix+strconv.Itoa(n)+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return "", fmt.Errorf("opening slot %d: %w", n, err)
		}
		if err := flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue // a live process's
			}
			return "", fmt.Errorf("locking slot %d: %w", n, err)
		}
		s.slot, s.slotN = f, n
		s.replicaID = host + "/" + strconv.Itoa(n)
		return s.replicaID, nil
	}
}

// DeadReplicas names the identities of this directory's other slots whose processes are
// gone: their lock files can be locked. What they held in the spool is unlocked now,
// counted and replayed by the live processes on the directory.
func (s *Spool) DeadReplicas() ([]string, error) {
	host, err := s.hostID()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	mine := s.slotN
	if s.slot == nil {
		mine = -1
	}
	s.mu.Unlock()
	var dead []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, slotPrefix) || !strings.HasSuffix(name, ".lock") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, slotPrefix), ".lock"))
		if err != nil || n == mine {
			continue
		}
		f, err := os.Open(filepath.Join(s.dir, name))
		if err != nil {
			continue
		}
		if flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			dead = append(dead, host+"/"+strconv.Itoa(n))
		}
		f.Close() // releases the lock at once: a process starting now can take the slot
	}
	return dead, nil
}

// hostID reads the directory's id, creating it the first time.
func (s *Spool) hostID() (string, error) {
	path := filepath.Join(s.dir, hostIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id, err := uuid.ParseBytes([]byte(strings.TrimSpace(string(b))))
		if err != nil {
			return "", fmt.Errorf("reading %s: %w", path, err)
		}
		return id.String(), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	// Created under a temporary name and linked into place: two processes starting at
	// once agree on the first one's id.
	tmp, err := os.CreateTemp(s.dir, ".host-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(uuid.NewString() + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	tmp.Close()
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if err := syncDir(s.dir); err != nil {
		return "", err
	}
	return s.hostID()
}
