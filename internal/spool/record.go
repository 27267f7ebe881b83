package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/google/uuid"

	"github.com/objwatch/callback/internal/callback"
)

// Segment headers and records, as the package doc describes them.

const (
	headerSize       = 8
	recordHeaderSize = 8
	// minBatch is a batch id, the encoding's version byte and one callback with an
	// empty id list (a 16-byte id, a 1-byte time and a 1-byte count): a version 3
	// payload at least.
	minBatch = 16 + 1 + 16 + 1 + 1

	// maxRecordPayload bounds what a corrupt length can make replay allocate. A
	// callback this large would be refused by the HTTP layer long before.
	maxRecordPayload = 64 << 20
)

var (
	// header is what new segments start with: version 3. Older versions are still
	// read (legacy.go).
	header     = [headerSize]byte{'O', 'W', 'S', 'P', 'O', 'O', 'L', 3}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// appendRecord appends the version 3 record of the batch cbs, with id batchID, to buf.
func appendRecord(buf []byte, batchID uuid.UUID, cbs []callback.Callback) ([]byte, error) {
	start := len(buf)
	buf = append(buf, make([]byte, recordHeaderSize)...) // length and checksum, filled below
	buf = append(buf, batchID[:]...)
	buf = callback.AppendEncoded(buf, cbs)
	payload := len(buf) - start - recordHeaderSize
	if payload > maxRecordPayload {
		return buf[:start], fmt.Errorf("record of %d bytes exceeds %d", payload, maxRecordPayload)
	}
	sealRecord(buf[start:])
	return buf, nil
}

// sealRecord fills in the length and checksum of rec, a record header and its payload.
func sealRecord(rec []byte) {
	binary.LittleEndian.PutUint32(rec, uint32(len(rec)-recordHeaderSize))
	crc := crc32.Update(0, castagnoli, rec[:4])
	crc = crc32.Update(crc, castagnoli, rec[recordHeaderSize:])
	binary.LittleEndian.PutUint32(rec[4:], crc)
}

// recordFormat is how the records of one segment version are read.
type recordFormat struct {
	minPayload uint32
	// add decodes the checksummed payload p onto batches. A payload that does not
	// decode is corrupt: then it returns false and batches as they were.
	add func(batches []callback.Batch, p []byte) ([]callback.Batch, bool)
}

// formatOf is the record format of segments that start with h, if this version
// reads them.
func formatOf(h []byte) (recordFormat, bool) {
	switch {
	case bytes.Equal(h, header[:]):
		return recordFormat{minPayload: minBatch, add: addBatch}, true
	case bytes.Equal(h, headerV2[:]):
		return recordFormat{minPayload: minBatchV2, add: addBatchV2}, true
	case bytes.Equal(h, headerV1[:]):
		return recordFormat{minPayload: minCallbackV1, add: addCallbackV1}, true
	}
	return recordFormat{}, false
}

// decodeSegment returns the batches of the valid records of data, in order, up to the
// first torn or corrupt one, and how many bytes of data they (and the header) cover. It
// fails only if data does not start with a header it knows; a header cut short by a
// crash is an empty segment.
func decodeSegment(data []byte) (batches []callback.Batch, good int, err error) {
	if len(data) < headerSize {
		// Every version's header starts with the same 7 bytes.
		if bytes.HasPrefix(header[:], data) {
			return nil, len(data), nil
		}
		return nil, 0, fmt.Errorf("short header %q", data)
	}
	format, ok := formatOf(data[:headerSize])
	if !ok {
		return nil, 0, fmt.Errorf("unknown header %q", data[:headerSize])
	}
	off := headerSize
	for len(data)-off >= recordHeaderSize {
		length := binary.LittleEndian.Uint32(data[off:])
		if length < format.minPayload || length > maxRecordPayload || uint64(len(data)-off-recordHeaderSize) < uint64(length) {
			break
		}
		end := off + recordHeaderSize + int(length)
		crc := crc32.Update(0, castagnoli, data[off:off+4])
		crc = crc32.Update(crc, castagnoli, data[off+recordHeaderSize:end])
		if crc != binary.LittleEndian.Uint32(data[off+4:]) {
			break
		}
		if batches, ok = format.add(batches, data[off+recordHeaderSize:end]); !ok {
			break
		}
		off = end
	}
	return batches, off, nil
}

// addBatch decodes a version 3 payload: one batch.
func addBatch(batches []callback.Batch, p []byte) ([]callback.Batch, bool) {
	cbs, err := callback.Decode(p[16:])
	if err != nil || len(cbs) == 0 {
		return batches, false
	}
	return append(batches, callback.Batch{ID: uuid.UUID(p[:16]), Callbacks: cbs}), true
}
