// Package spool keeps accepted callbacks durable on local disk while Postgres is
// unreachable, and hands them back for replay into the inbox once it is reachable again.
//
// # Files
//
// A spool directory holds segments, one file each, named <segment id>.spool where the
// segment id is a UUIDv7 (so names sort by creation time and replay goes oldest first).
// A process appends only to its own active segment and holds an exclusive flock(2) on it
// for as long as it is open. A segment is sealed (closed, lock released, never written
// again) when it passes maxSegmentBytes, after any failed write or fsync, when Replay
// takes it for replay, and on Close.
//
// A segment starts with an 8-byte header, "OWSPOOL" and a version byte, followed by
// records. Each record is one Append, that is one group commit's batch (version 3):
//
//	length   uint32, little endian: the payload's length
//	checksum uint32, little endian: CRC-32C (Castagnoli) of the 4 length bytes and the payload
//	payload:
//	  batch id     16 bytes: the id the committer minted for the batch (callback.Batch)
//	  callbacks    to the end of the payload: the batch's callbacks in the encoding an
//	               inbox batch holds them in (callback.AppendEncoded documents it)
//
// The batch id is what makes replay idempotent: a batch whose commit timed out but did
// commit is in the inbox and here under the same id, and replay skips it
// (store.ReplaySegment). Segments of versions 1 and 2, written by older releases, are
// still read (legacy.go): version 2 differed only in how it encoded callbacks, and
// version 1, written before batches had ids, held one callback per record and is
// replayed as one batch without an id. Only new segments are written, so a segment
// never mixes versions.
//
// A batch is one record, so it reaches the disk whole or, torn by a crash, not at all
// (it was then never acknowledged). The encoding is compact, varints and ids as
// differences, because the spool's cost is the bytes written and fsynced, not the
// decoding; receipt times keep microseconds, all that the inbox keeps. Every record is
// checksummed on its own, and the checksum covers the length, so a torn tail (a crash
// in the middle of a write, which was therefore never acknowledged) or a zero-filled
// tail is recognised, and replay stops there: the good prefix is replayed, the rest is
// ignored with a warning.
//
// # Durability
//
// Append encodes the whole batch into one buffer, writes it with one write(2) and makes
// it durable with one fdatasync(2): concurrent callbacks share one fsync because the
// caller (the group committer) batches them. fdatasync flushes the data and the file size
// needed to read it back. The segment's directory entry was made durable when the
// segment was created: the file is created under a temporary name, locked, renamed to
// its final name and the directory is fsynced, all before the first record is written;
// Open fsyncs the parent of every directory it creates. So when Append returns nil, the
// record bytes and the name that leads to them are on stable storage, and a kill -9 or a
// power cut after that cannot lose them. When Append returns an error nothing is claimed
// (the caller answers 503). A record cut short by the failure is a torn record, never
// replayed; a whole one whose fsync failed may still be replayed later: a refused batch
// then counts as accepted after all, which is harmless. After
// a failed write or fsync the segment is sealed, so that no acknowledged record ever
// follows garbage, and because after a failed fsync Linux may have dropped the dirty
// pages and a later fsync of the same file could succeed without them.
//
// # Locking and replay
//
// Several processes on one host share one directory. flock locks belong to an open file
// description, so they conflict between processes and also between two opens in one
// process, and the kernel drops them when the process dies, even by kill -9. Replay
// takes each segment with LOCK_EX|LOCK_NB: a segment still locked is some live
// process's active segment and is skipped; a segment it can lock is sealed (by this
// process or by one that has died) and nobody will write it again. After taking the
// lock, Replay checks that the name still leads to the file it locked: otherwise another
// replayer removed it in between, and it is skipped. The lock is held while apply runs
// and until the file is removed, so two replicas never replay one segment at once.
// Creating the file under a temporary name that Replay does not look at closes the one
// window in which a live process's segment is not yet locked.
//
// Replay is at-least-once: a crash after apply committed but before the file was removed
// replays the segment again. apply makes that exactly-once: it records the segment id in
// the transaction that inserts the callbacks, so it recognises a segment it has already
// committed.
//
// Segments are replayed whole, never in chunks, so a segment id names one transaction.
// maxSegmentBytes keeps that transaction, and the memory replay needs, bounded.
//
// The directory must be on a local file system: flock over NFS is not to be trusted.
package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// ErrClosed is returned by Append and Replay after Close.
var ErrClosed = errors.New("spool closed")

const (
	segmentExt = ".spool"
	// tmpExt marks a segment being created: not yet locked, so Replay must not touch it.
	tmpExt = ".spool.tmp"
	// corruptExt is where a file with a header we do not understand is moved, so that
	// it stops being retried and is kept for a human.
	corruptExt = ".spool.corrupt"

	// maxSegmentBytes: the active segment is sealed once it is this large. 8 MiB is
	// about 10,000 callbacks of 200 ids, which is one replay transaction and about
	// 50 MB of decoded ids in memory at worst (1-byte ids). A rotation costs one
	// directory fsync, nothing next to the record fsyncs.
	maxSegmentBytes = 8 << 20
)

// Spool is a directory of segments. Its methods are safe for concurrent use.
type Spool struct {
	dir    string
	logger *slog.Logger

	// maxSegmentBytes is a field so that tests can rotate small segments.
	maxSegmentBytes int64
	// write and sync are the system calls, replaceable by tests that need them to fail.
	write func(f *os.File, b []byte) (int, error)
	sync  func(fd int) error

	// replayMu serialises Replay calls of this process (file locks would also keep them
	// apart, but they would skip each other's segments and report less than they could).
	replayMu sync.Mutex

	mu     sync.Mutex // guards everything below
	closed bool
	active *segment // nil until the first Append and after every seal
	buf    []byte   // encoding buffer, reused across Appends

	// For OldestHeld (held.go): the segments this process is replaying, with their
	// oldest receipt (zero until read), and the oldest receipt of sealed segments read.
	replaying    map[uuid.UUID]time.Time
	sealedOldest map[uuid.UUID]time.Time
	// This process's slot in the directory (ReplicaID), locked while the spool is open.
	slot      *os.File
	slotN     int
	replicaID string
}

// segment is the process's active segment: open, locked, appended to.
type segment struct {
	id      uuid.UUID
	f       *os.File
	fd      int
	size    int64
	records int
	oldest  time.Time // the oldest receipt appended
}

// Open prepares dir (created with mode 0700 if missing). Nothing else is created until
// the first Append. A nil logger discards.
func Open(dir string, logger *slog.Logger) (*Spool, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := mkdirAllDurable(dir); err != nil {
		return nil, fmt.Errorf("opening spool %s: %w", dir, err)
	}
	return &Spool{
		dir:             dir,
		logger:          logger,
		maxSegmentBytes: maxSegmentBytes,
		write:           (*os.File).Write,
		sync:            syscall.Fdatasync,
		replaying:       map[uuid.UUID]time.Time{},
		sealedOldest:    map[uuid.UUID]time.Time{},
	}, nil
}

// Stats counts the segments in the directory (of every process) and their total size.
// It lists the directory, nothing more.
func (s *Spool) Stats() (segments int, bytes int64) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		s.logger.Warn("listing spool directory", "dir", s.dir, "error", err)
		return 0, 0
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), segmentExt) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed since the listing
		}
		segments++
		bytes += info.Size()
	}
	return segments, bytes
}

// Close seals the active segment, releasing its lock so that any replayer may take it.
// It does not wait for a Replay in progress. Append and Replay fail after Close.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.slot != nil {
		s.slot.Close() // the slot is free for the next process
		s.slot = nil
	}
	if s.active == nil {
		return nil
	}
	err := s.active.f.Close()
	s.active = nil
	if err != nil {
		return fmt.Errorf("closing spool segment: %w", err)
	}
	return nil
}
