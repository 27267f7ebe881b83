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
// records. Each record is one Append, that is one group commit's batch (version 2):
//
//	length   uint32, little endian: the payload's length
//	checksum uint32, little endian: CRC-32C (Castagnoli) of the 4 length bytes and the payload
//	payload:
//	  batch id     16 bytes: the id the committer minted for the batch (callback.Batch)
//	  callbacks    uvarint: how many callbacks follow, each:
//	    callback id  16 bytes
//	    receivedAt   8 bytes, big endian int64, Unix nanoseconds
//	    count        uvarint: how many object ids follow
//	    object ids   count zig-zag varints (binary.AppendVarint)
//
// The batch id is what makes replay idempotent: a batch whose commit timed out but did
// commit is in the inbox and here under the same id, and replay skips it
// (store.ReplaySegment). Version 1 segments, written before batches had ids, hold one
// callback per record (the payload is one callback as above, without batch id and
// count); they are still read, and replayed as one batch without an id. Only new
// segments are written, so a segment never mixes versions.
//
// A batch is one record, so it reaches the disk whole or, torn by a crash, not at all
// (it was then never acknowledged). Varints, not fixed 8-byte ids: object ids are usually small positive numbers, so a
// record is 2-4 times smaller, and the spool's cost is the bytes written and fsynced, not
// the decoding. Every record is checksummed on its own, and the checksum covers the length,
// so a torn tail (a crash in the middle of a write, which was therefore never
// acknowledged) or a zero-filled tail is recognised, and replay stops there: the good
// prefix is replayed, the rest is ignored with a warning.
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
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
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

	headerSize       = 8
	recordHeaderSize = 8
	// minCallback is an id and a time and an empty id list: a version 1 payload at least.
	minCallback = 16 + 8 + 1
	// minBatch is a batch id, a count and one callback: a version 2 payload at least.
	minBatch = 16 + 1 + minCallback

	// maxSegmentBytes: the active segment is sealed once it is this large. 8 MiB is
	// about 10,000 callbacks of 200 ids, which is one replay transaction and about
	// 50 MB of decoded ids in memory at worst (1-byte ids). A rotation costs one
	// directory fsync, nothing next to the record fsyncs.
	maxSegmentBytes = 8 << 20
	// maxRecordPayload bounds what a corrupt length can make replay allocate. A
	// callback this large would be refused by the HTTP layer long before.
	maxRecordPayload = 64 << 20

	// staleTmpAge: a temporary segment older than this was left by a process that died
	// while creating it (creation takes microseconds); it holds no records, so it is
	// removed.
	staleTmpAge = time.Minute
)

var (
	// header is what new segments start with; headerV1 is still read.
	header     = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 2}
	headerV1   = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 1}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
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
}

// segment is the process's active segment: open, locked, appended to.
type segment struct {
	id      uuid.UUID
	f       *os.File
	fd      int
	size    int64
	records int
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
	}, nil
}

// mkdirAllDurable is os.MkdirAll(dir, 0o700) followed by an fsync of the parent of each
// directory it created, so that a crash cannot take away the directory that durable
// segments live in.
func mkdirAllDurable(dir string) error {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if parent := filepath.Dir(d); parent == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range slices.Backward(missing) {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

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

// Replay hands every sealed segment in the directory, oldest first, to apply, and
// removes each one for which apply returns nil. It first seals this process's active
// segment if it holds records, so that it is replayed too and new Appends go to a fresh
// segment. Segments locked by another live process are skipped. replayed counts the
// callbacks passed to successful applies.
//
// apply gets a whole segment at once and must commit it, with segment in the same
// transaction, before it returns nil. If apply returns an error, Replay stops and
// returns it; the segment stays for the next Replay. apply may see a segment again
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

	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return replayed, err
		}
		n, err := s.replaySegment(ctx, id, apply)
		replayed += n
		if err != nil {
			return replayed, err
		}
	}
	return replayed, nil
}

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
	for _, b := range batches {
		n += len(b.Callbacks)
	}
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
	if err != nil || h != header && h != headerV1 {
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

// appendRecord appends the version 2 record of the batch cbs, with id batchID, to buf.
func appendRecord(buf []byte, batchID uuid.UUID, cbs []callback.Callback) ([]byte, error) {
	start := len(buf)
	buf = append(buf, make([]byte, recordHeaderSize)...) // length and checksum, filled below
	buf = append(buf, batchID[:]...)
	buf = binary.AppendUvarint(buf, uint64(len(cbs)))
	for i := range cbs {
		buf = appendCallback(buf, &cbs[i])
	}
	payload := len(buf) - start - recordHeaderSize
	if payload > maxRecordPayload {
		return buf[:start], fmt.Errorf("record of %d bytes exceeds %d", payload, maxRecordPayload)
	}
	sealRecord(buf[start:])
	return buf, nil
}

// appendCallback appends one callback as a record's payload holds it.
func appendCallback(buf []byte, cb *callback.Callback) []byte {
	buf = append(buf, cb.ID[:]...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(cb.ReceivedAt.UnixNano()))
	buf = binary.AppendUvarint(buf, uint64(len(cb.ObjectIDs)))
	for _, id := range cb.ObjectIDs {
		buf = binary.AppendVarint(buf, id)
	}
	return buf
}

// sealRecord fills in the length and checksum of rec, a record header and its payload.
func sealRecord(rec []byte) {
	binary.LittleEndian.PutUint32(rec, uint32(len(rec)-recordHeaderSize))
	crc := crc32.Update(0, castagnoli, rec[:4])
	crc = crc32.Update(crc, castagnoli, rec[recordHeaderSize:])
	binary.LittleEndian.PutUint32(rec[4:], crc)
}

// decodeSegment returns the batches of the valid records of data, in order, up to the
// first torn or corrupt one, and how many bytes of data they (and the header) cover. It
// fails only if data does not start with a header it knows; a header cut short by a
// crash is an empty segment. A version 1 segment comes back as one batch without an id.
func decodeSegment(data []byte) (batches []callback.Batch, good int, err error) {
	if len(data) < headerSize {
		if bytes.HasPrefix(header[:], data) || bytes.HasPrefix(headerV1[:], data) {
			return nil, len(data), nil
		}
		return nil, 0, fmt.Errorf("short header %q", data)
	}
	v1 := bytes.Equal(data[:headerSize], headerV1[:])
	if !v1 && !bytes.Equal(data[:headerSize], header[:]) {
		return nil, 0, fmt.Errorf("unknown header %q", data[:headerSize])
	}
	minPayload := uint32(minBatch)
	if v1 {
		minPayload = minCallback
		batches = []callback.Batch{{}}
	}
	off := headerSize
	for len(data)-off >= recordHeaderSize {
		length := binary.LittleEndian.Uint32(data[off:])
		if length < minPayload || length > maxRecordPayload || uint64(len(data)-off-recordHeaderSize) < uint64(length) {
			break
		}
		end := off + recordHeaderSize + int(length)
		crc := crc32.Update(0, castagnoli, data[off:off+4])
		crc = crc32.Update(crc, castagnoli, data[off+recordHeaderSize:end])
		if crc != binary.LittleEndian.Uint32(data[off+4:]) {
			break
		}
		p := data[off+recordHeaderSize : end]
		if v1 {
			cb, rest, ok := decodeCallback(p)
			if !ok || len(rest) > 0 {
				break
			}
			batches[0].Callbacks = append(batches[0].Callbacks, cb)
		} else {
			b, ok := decodeBatch(p)
			if !ok {
				break
			}
			batches = append(batches, b)
		}
		off = end
	}
	if v1 && len(batches[0].Callbacks) == 0 {
		batches = nil
	}
	return batches, off, nil
}

// decodeBatch decodes one checksummed version 2 payload.
func decodeBatch(p []byte) (callback.Batch, bool) {
	var b callback.Batch
	copy(b.ID[:], p[:16])
	p = p[16:]
	count, n := binary.Uvarint(p)
	// Each callback takes at least minCallback bytes: a larger count is corruption.
	if n <= 0 || count == 0 || count > uint64((len(p)-n)/minCallback) {
		return b, false
	}
	p = p[n:]
	b.Callbacks = make([]callback.Callback, count)
	for i := range b.Callbacks {
		var ok bool
		if b.Callbacks[i], p, ok = decodeCallback(p); !ok {
			return b, false
		}
	}
	return b, len(p) == 0
}

// decodeCallback decodes one callback from the start of p and returns the rest.
// ObjectIDs is never nil, so that an empty list stays an empty array, not a NULL.
func decodeCallback(p []byte) (callback.Callback, []byte, bool) {
	var cb callback.Callback
	if len(p) < minCallback {
		return cb, p, false
	}
	copy(cb.ID[:], p[:16])
	cb.ReceivedAt = time.Unix(0, int64(binary.BigEndian.Uint64(p[16:24]))).UTC()
	p = p[24:]
	count, n := binary.Uvarint(p)
	// Each id takes at least one byte: a larger count is corruption, and checking it
	// first keeps a bad count from allocating.
	if n <= 0 || count > uint64(len(p)-n) {
		return cb, p, false
	}
	p = p[n:]
	cb.ObjectIDs = make([]int64, count)
	for i := range cb.ObjectIDs {
		id, n := binary.Varint(p)
		if n <= 0 {
			return cb, p, false
		}
		cb.ObjectIDs[i] = id
		p = p[n:]
	}
	return cb, p, true
}

func flock(fd, how int) error {
	for {
		err := syscall.Flock(fd, how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// samePath reports whether path still names the file f has open.
func samePath(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// syncDir fsyncs a directory, making the names created, renamed or removed in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
