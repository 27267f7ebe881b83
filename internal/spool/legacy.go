package spool

import (
	"encoding/binary"
	"time"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// Reading segments of earlier versions, so that what an older release spooled is still
// replayed after an upgrade. Nothing writes them any more: their encoders live on only
// in the tests, which write such segments and replay them.
//
// Both versions encode a callback the same way:
//
//	callback id  16 bytes
//	receivedAt   8 bytes, big endian int64, Unix nanoseconds
//	count        uvarint: how many object ids follow
//	object ids   count zig-zag varints (binary.AppendVarint)
//
// Version 2: a record is one batch: its id (16 bytes), a uvarint count of callbacks,
// then the callbacks. Version 1, written before batches had ids: a record is one
// callback, and the segment is replayed as one batch without an id.

var (
	headerV2 = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 2}
	headerV1 = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 1}
)

const (
	// minCallbackV1 is an id and a time and an empty id list: a version 1 payload at least.
	minCallbackV1 = 16 + 8 + 1
	// minBatchV2 is a batch id, a count and one callback: a version 2 payload at least.
	minBatchV2 = 16 + 1 + minCallbackV1
)

// addBatchV2 decodes a version 2 payload: one batch.
func addBatchV2(batches []callback.Batch, p []byte) ([]callback.Batch, bool) {
	b := callback.Batch{ID: uuid.UUID(p[:16])}
	p = p[16:]
	count, n := binary.Uvarint(p)
	// Each callback takes at least minCallbackV1 bytes: a larger count is corruption.
	if n <= 0 || count == 0 || count > uint64((len(p)-n)/minCallbackV1) {
		return batches, false
	}
	p = p[n:]
	b.Callbacks = make([]callback.Callback, count)
	for i := range b.Callbacks {
		var ok bool
		if b.Callbacks[i], p, ok = decodeCallbackV1(p); !ok {
			return batches, false
		}
	}
	if len(p) > 0 {
		return batches, false
	}
	return append(batches, b), true
}

// addCallbackV1 decodes a version 1 payload: one callback, which joins the segment's
// one batch.
func addCallbackV1(batches []callback.Batch, p []byte) ([]callback.Batch, bool) {
	cb, rest, ok := decodeCallbackV1(p)
	if !ok || len(rest) > 0 {
		return batches, false
	}
	if len(batches) == 0 {
		batches = []callback.Batch{{}}
	}
	batches[0].Callbacks = append(batches[0].Callbacks, cb)
	return batches, true
}

// decodeCallbackV1 decodes one callback of version 1 or 2 from the start of p and
// returns the rest. ObjectIDs is never nil, so that an empty list stays an empty
// array, not a NULL.
func decodeCallbackV1(p []byte) (callback.Callback, []byte, bool) {
	var cb callback.Callback
	if len(p) < minCallbackV1 {
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
