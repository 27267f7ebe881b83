package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// staleTmpAge: a temporary segment older than this was left by a process that died
// while creating it (creation takes microseconds); it holds no records, so it is
// removed.
const staleTmpAge = time.Minute

// Replay hands every sealed segment in the directory, oldest first, to apply, and
// removes each one for which apply returns nil. It first seals this process's active
// segment if it holds records, so that it is replayed too and new Appends go to a fresh
// segment. Segments locked by another live process are skipped. replayed counts the
// callbacks passed to successful applies.
//
// apply gets a whole segment at once and must commit it, with segment in the same
// transaction, before it returns nil. If apply returns an error, the segment stays for
// the next Replay, and Replay goes on with the next one unless the error wraps ErrStop;
// it returns the errors joined. apply may see a segment again
// after a crash, or if removing the file failed: it recognises it by its id.
func (s *Spool) Replay(ctx context.Context, apply func(ctx context.Context, segment uuid.UUID, batches []callback.Batch) error) (replayed int, err error) {
	s.replayMu.Lock()
	defer s.replayMu.Unlock()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	var activeID uuid.UUID
	if s.active != nil {
		if s.active.records > 0 {
			s.sealLocked()
		} else {
			activeID = s.active.id
		}
	}
	s.mu.Unlock()

	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, fmt.Errorf("listing spool %s: %w", s.dir, err)
	}
	var ids []uuid.UUID
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, tmpExt):
			s.removeStaleTmp(name)
		case strings.HasSuffix(name, corruptExt):
			if id, ok := s.reclaimSetAside(ctx, name); ok {
				ids = append(ids, id)
			}
		case strings.HasSuffix(name, segmentExt):
			id, err := uuid.Parse(strings.TrimSuffix(name, segmentExt))
			if err != nil {
				s.logger.WarnContext(ctx, "ignoring file in spool directory", "file", name)
				continue
			}
			if id != activeID {
				ids = append(ids, id)
			}
		}
	}
	// UUIDv7 sorts by creation time, to the millisecond, then by its random bits.
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })

	// A segment whose replay fails does not hold back the others: each is tried, unless
	// apply says to stop (ErrStop: the database is gone, the rest would fail too).
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return replayed, errors.Join(append(errs, err)...)
		}
		n, err := s.replaySegment(ctx, id, apply)
		replayed += n
		if err != nil {
			errs = append(errs, err)
			if errors.Is(err, ErrStop) {
				break
			}
		}
	}
	return replayed, errors.Join(errs...)
}

// ErrStop, wrapped in what apply returns, ends a Replay at that segment: the segments
// after it are not tried.
var ErrStop = errors.New("replay stopped")

// replaySegment replays one segment if it can lock it. n counts the callbacks applied.
func (s *Spool) replaySegment(ctx context.Context, id uuid.UUID, apply func(context.Context, uuid.UUID, []callback.Batch) error) (n int, err error) {
	path := filepath.Join(s.dir, id.String()+segmentExt)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // replayed and removed by someone else since we listed
	}
	if err != nil {
		return 0, fmt.Errorf("opening spool segment %s: %w", id, err)
	}
	defer f.Close() // releases the lock, after the removal below
	if err := flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return 0, nil // a live process's active segment, or another replayer's
		}
		return 0, fmt.Errorf("locking spool segment %s: %w", id, err)
	}
	// Between our open and our lock, another replayer may have replayed and removed
	// the file: then the name no longer leads to what we locked.
	if same, err := samePath(f, path); err != nil {
		return 0, fmt.Errorf("checking spool segment %s: %w", id, err)
	} else if !same {
		return 0, nil
	}
	// Held by this process from the lock until its replay committed or failed: other
	// processes skip a locked segment (OldestHeld). Its receipts count as the caller's
	// floor until they are read.
	s.mu.Lock()
	s.replaying[id] = time.Time{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.replaying, id)
		s.mu.Unlock()
	}()

	data, err := io.ReadAll(f)
	if err != nil {
		return 0, fmt.Errorf("reading spool segment %s: %w", id, err)
	}
	batches, good, err := decodeSegment(data)
	if err != nil {
		// Not a segment we understand: keep it for a human, out of Replay's way.
		s.logger.ErrorContext(ctx, "moving aside unreadable spool segment", "segment", id, "error", err)
		if err := os.Rename(path, strings.TrimSuffix(path, segmentExt)+corruptExt); err != nil {
			return 0, fmt.Errorf("moving aside spool segment %s: %w", id, err)
		}
		s.syncDirAfterRemove(ctx, id)
		return 0, nil
	}
	if ignored := len(data) - good; ignored > 0 {
		s.logger.WarnContext(ctx, "spool segment has a torn or corrupt tail; replaying the records before it",
			"segment", id, "records", len(batches), "ignored_bytes", ignored)
	}
	oldest := time.Time{}
	for _, b := range batches {
		n += len(b.Callbacks)
		for _, cb := range b.Callbacks {
			if oldest.IsZero() || cb.ReceivedAt.Before(oldest) {
				oldest = cb.ReceivedAt
			}
		}
	}
	s.mu.Lock()
	s.replaying[id] = oldest
	s.mu.Unlock()
	if n > 0 {
		if err := apply(ctx, id, batches); err != nil {
			return 0, fmt.Errorf("applying spool segment %s: %w", id, err)
		}
	}
	if err := os.Remove(path); err != nil {
		// apply committed, so a second replay of this segment is recognised by its id.
		return n, fmt.Errorf("removing spool segment %s: %w", id, err)
	}
	s.syncDirAfterRemove(ctx, id)
	return n, nil
}

// reclaimSetAside takes back a segment that a replica of an older version set aside
// because it did not know its header: during a rolling upgrade, replicas of two
// versions share one spool directory, and the older one moves the newer one's segments
// aside. A set-aside file with a header this version knows is renamed back and
// replayed. Anything else stays where it is, for a human.
func (s *Spool) reclaimSetAside(ctx context.Context, name string) (uuid.UUID, bool) {
	id, err := uuid.Parse(strings.TrimSuffix(name, corruptExt))
	if err != nil {
		return uuid.UUID{}, false
	}
	path := filepath.Join(s.dir, name)
	f, err := os.Open(path)
	if err != nil {
		return uuid.UUID{}, false
	}
	var h [headerSize]byte
	_, err = io.ReadFull(f, h[:])
	f.Close()
	if _, known := formatOf(h[:]); err != nil || !known {
		return uuid.UUID{}, false
	}
	// Another replica may do the same at once: a rename is atomic, and the loser's
	// fails harmlessly; replaySegment locks the file either way.
	if err := os.Rename(path, filepath.Join(s.dir, id.String()+segmentExt)); err != nil {
		return uuid.UUID{}, false
	}
	s.logger.InfoContext(ctx, "replaying a spool segment an older version had set aside", "segment", id)
	return id, true
}

// syncDirAfterRemove makes a removal durable. If it fails, a crash may bring the file
// back, and it will be replayed again and recognised: worth a warning, not a failure.
func (s *Spool) syncDirAfterRemove(ctx context.Context, id uuid.UUID) {
	if err := syncDir(s.dir); err != nil {
		s.logger.WarnContext(ctx, "syncing spool directory after removing a segment", "segment", id, "error", err)
	}
}

// removeStaleTmp removes a temporary segment left by a process that died while creating
// it. A temporary file holds no records. The age check keeps us away from one being
// created right now (its creator has not locked it yet).
func (s *Spool) removeStaleTmp(name string) {
	path := filepath.Join(s.dir, name)
	info, err := os.Stat(path)
	if err != nil || time.Since(info.ModTime()) < staleTmpAge {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return
	}
	if same, err := samePath(f, path); err != nil || !same {
		return
	}
	if err := os.Remove(path); err == nil {
		s.logger.Info("removed a spool segment left half-created", "file", name)
	}
}
