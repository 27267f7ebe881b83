package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

const (
	headerSize       = 8
	recordHeaderSize = 8
	// minCallback is an id and a time and an empty id list: a version 1 payload at least.
	minCallback = 16 + 8 + 1
	// minBatch is a batch id, a count and one callback: a version 2 payload at least.
	minBatch = 16 + 1 + minCallback

	// maxRecordPayload bounds what a corrupt length can make replay allocate. A
	// callback this large would be refused by the HTTP layer long before.
	maxRecordPayload = 64 << 20
)

var (
	// header is what new segments start with; headerV1 is still read.
	header     = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 2}
	headerV1   = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 1}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

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
