package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// Append is AppendBatch under a new batch id.
func (s *Spool) Append(cbs []callback.Callback) error {
	return s.AppendBatch(uuid.Must(uuid.NewV7()), cbs)
}

// AppendBatch makes cbs durable as one batch with the id batchID: when it returns nil,
// the record is on stable storage. One write and one fsync for the whole batch. An
// error means none of cbs may be acknowledged.
func (s *Spool) AppendBatch(batchID uuid.UUID, cbs []callback.Callback) error {
	if len(cbs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}

	buf, err := appendRecord(s.buf[:0], batchID, cbs)
	if err != nil {
		return fmt.Errorf("encoding batch %s: %w", batchID, err)
	}
	// Keep the buffer for the next batch unless one huge batch made it huge.
	if cap(buf) <= 4<<20 {
		s.buf = buf
	} else {
		s.buf = nil
	}

	if s.active == nil {
		seg, err := s.createSegment()
		if err != nil {
			return fmt.Errorf("creating spool segment: %w", err)
		}
		s.active = seg
	}
	seg := s.active
	// Counted as held before any byte is written: a record on disk is never missing
	// from OldestHeld, even one whose write then failed.
	for _, cb := range cbs {
		if seg.oldest.IsZero() || cb.ReceivedAt.Before(seg.oldest) {
			seg.oldest = cb.ReceivedAt
		}
	}
	if _, err := s.write(seg.f, buf); err != nil {
		s.sealLocked()
		return fmt.Errorf("writing spool segment %s: %w", seg.id, err)
	}
	if err := s.sync(seg.fd); err != nil {
		s.sealLocked()
		return fmt.Errorf("syncing spool segment %s: %w", seg.id, err)
	}
	seg.size += int64(len(buf))
	seg.records += len(cbs)
	if seg.size >= s.maxSegmentBytes {
		s.sealLocked()
	}
	return nil
}

// createSegment creates, locks and names a new segment, durably. The file is locked
// before its final name exists, so a replayer can never take a live segment.
func (s *Spool) createSegment() (_ *segment, err error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	final := filepath.Join(s.dir, id.String()+segmentExt)
	tmp := filepath.Join(s.dir, id.String()+tmpExt)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	fd := int(f.Fd())
	if err := flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("locking %s: %w", tmp, err)
	}
	// The header reaches the disk with the first record's fdatasync.
	if _, err := s.write(f, header[:]); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	if err := syncDir(s.dir); err != nil {
		// The name may not be durable, so no record may go into this file. It is
		// renamed already: seal it rather than remove it, Replay will remove it.
		f.Close()
		return nil, err
	}
	return &segment{id: id, f: f, fd: fd, size: headerSize}, nil
}

// sealLocked closes the active segment, releasing its lock: from now on it belongs to
// whichever Replay takes it. Every record in it was fsynced by Append, so there is
// nothing to flush.
func (s *Spool) sealLocked() {
	if s.active == nil {
		return
	}
	if err := s.active.f.Close(); err != nil {
		s.logger.Warn("closing spool segment", "segment", s.active.id, "error", err)
	}
	s.active = nil
}
