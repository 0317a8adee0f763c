package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/wire"
)

// Moving a replicated partition from one replica to another. In a cluster
// a partition's Raft group compacts its log behind a snapshot that holds no
// messages (the messages are in Badger already, on every replica); a
// replica too far behind to catch up from the log fetches the partition
// itself from a peer that has applied at least the snapshot's index: the
// peer Exports it, and this node Imports it (import.go).
//
// An export is every key of the partition, read in one Badger read
// transaction taken while the partition's writer waits, so the data is the
// state after exactly the applied index its meta records. In this order:
//
//	p <tid> <part>               the partition meta (first, head, bytes, last
//	                             time, applied): always the first pair
//	a <tid> <sid> <id>           acked ids of the topic's subscriptions, with
//	                             their expiry; they are kept per topic, not per
//	                             partition, so every partition's export has
//	                             them all
//	c <tid> <part> <sid>         the subscriptions' cursors in the partition
//	m <tid> <part> <off> ...     the messages, offsets first to head-1
//
// cut into chunks of about a given size (at least one pair each):
//
//	chunk: ver u8 | n uvar | pair*n
//	pair:  key bytes | expires uvar (unix seconds; 0 never) | value bytes
//
// "bytes" is a uvarint length and the bytes. Only acked ids expire. The
// keys after the meta are in ascending order, across chunks too, so an
// importer can check that nothing is repeated or out of place, and that
// the messages are exactly first to head-1 (importCheck).

// exportChunkMaxPairs bounds the pairs of a chunk: a decoder refuses more
// before it allocates.
const exportChunkMaxPairs = 1 << 20

// exportPair is one key of an export, with its value and Badger expiry.
type exportPair struct {
	key, value []byte
	expires    uint64
}

// appendExportPair appends one pair to a chunk's pairs.
func appendExportPair(b []byte, p exportPair) []byte {
	b = appendBytes(b, p.key)
	b = binary.AppendUvarint(b, p.expires)
	return appendBytes(b, p.value)
}

// encodeExportChunk encodes pairs as one chunk.
func encodeExportChunk(pairs []exportPair) []byte {
	n := 1 + binary.MaxVarintLen64
	for _, p := range pairs {
		n += 3*binary.MaxVarintLen64 + len(p.key) + len(p.value)
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = binary.AppendUvarint(b, uint64(len(pairs)))
	for _, p := range pairs {
		b = appendExportPair(b, p)
	}
	return b
}

// decodeExportChunk decodes a chunk's pairs, which share memory with b. It
// checks the framing only; importCheck checks what the pairs are. A
// malformed chunk is ErrInvalidExport.
func decodeExportChunk(b []byte) ([]exportPair, error) {
	d := wire.NewDecoder(b, ErrCorrupt)
	if ver := d.Byte(); ver != recordVersion {
		return nil, fmt.Errorf("export chunk version %d: %w", ver, ErrInvalidExport)
	}
	n := d.Uvarint()
	// A pair takes at least 3 bytes: the count cannot be more than that.
	if n == 0 || n > exportChunkMaxPairs || n > uint64(len(d.Rest())/3) {
		return nil, fmt.Errorf("export chunk of %d pairs in %d bytes: %w", n, len(b), ErrInvalidExport)
	}
	pairs := make([]exportPair, 0, n)
	for range n {
		p := exportPair{key: d.Bytes(), expires: d.Uvarint(), value: d.Bytes()}
		if d.Err() != nil {
			break
		}
		pairs = append(pairs, p)
	}
	if err := d.End(); err != nil {
		return nil, fmt.Errorf("export chunk: %w: %w", ErrInvalidExport, err)
	}
	return pairs, nil
}

// Export is a consistent read of a replicated partition for a peer that
// imports it: Replica.Export takes it, Next cuts it into chunks, Close
// releases it. It holds a Badger read transaction until Close. Its methods
// are not safe for concurrent use.
type Export struct {
	txn     *badger.Txn
	tid     uint32
	part    uint32
	meta    []byte // the meta pair's value, until it is sent
	first   uint64 // the partition's first offset: messages are read from it
	applied uint64
	stage   int // index into exportStages of the prefix being read
	it      *badger.Iterator
	carry   *exportPair // read, did not fit the last chunk
	refs    refReader   // resolves references into records
}

// exportStages are the kinds of key an export reads after the meta, in key
// order.
var exportStages = []byte{kindAckedID, kindCursor, kindMessage}

// Export reads the partition for a peer: every key of it as of the last
// entry applied, whose index Applied returns. The read transaction is
// taken while the writer waits, so the data and the applied index match.
// Close the Export when done.
func (r *Replica) Export(ctx context.Context) (*Export, error) {
	p := r.p
	st, resume, err := p.hold(ctx)
	if err != nil {
		return nil, err
	}
	txn := p.db.NewTransaction(false)
	resume(st)
	ex := &Export{txn: txn, tid: p.tid, part: p.part, refs: refReader{txn: txn}}
	err = getValue(txn, partitionKey(p.tid, p.part), func(v []byte) error {
		m, err := decodePartitionMeta(v)
		if err != nil {
			return err
		}
		if !m.equal(st.meta) {
			return fmt.Errorf("stored meta %+v differs from the writer's %+v: %w", m, st.meta, ErrCorrupt)
		}
		// The export holds records only, so it pins nothing.
		m.pin, m.pinOff = 0, 0
		ex.meta, ex.first, ex.applied = m.encode(), m.first, m.applied
		return nil
	})
	if err == nil && ex.meta == nil {
		err = fmt.Errorf("no partition meta: %w", ErrCorrupt)
	}
	if err != nil {
		txn.Discard()
		return nil, fmt.Errorf("export topic %q partition %d: %w", p.topic, p.part, err)
	}
	return ex, nil
}

// Applied is the Raft index of the last entry applied to the exported
// data.
func (ex *Export) Applied() uint64 { return ex.applied }

// Next returns the next chunk, of about maxBytes (a pair larger than that
// makes a chunk alone), and io.EOF after the last one. The chunk is the
// caller's.
func (ex *Export) Next(maxBytes int) ([]byte, error) {
	var pairs []exportPair
	size := 0
	add := func(p exportPair) bool {
		s := len(p.key) + len(p.value) + 3*binary.MaxVarintLen64
		if len(pairs) > 0 && (size+s > maxBytes || len(pairs) == exportChunkMaxPairs) {
			ex.carry = &p
			return false
		}
		pairs = append(pairs, p)
		size += s
		return true
	}
	if ex.meta != nil {
		add(exportPair{key: partitionKey(ex.tid, ex.part), value: ex.meta})
		ex.meta = nil
	}
	if ex.carry != nil {
		p := *ex.carry
		ex.carry = nil
		add(p)
	}
	for ex.carry == nil && ex.stage < len(exportStages) {
		if ex.it == nil {
			opts := badger.DefaultIteratorOptions
			opts.PrefetchValues = false
			opts.Prefix = ex.prefix(exportStages[ex.stage])
			ex.it = ex.txn.NewIterator(opts)
			if exportStages[ex.stage] == kindMessage {
				// From first: a key below it is one Badger brought back
				// (sweep.go), never part of the partition.
				ex.it.Seek(messageSeekKey(ex.tid, ex.part, ex.first))
			} else {
				ex.it.Rewind()
			}
		}
		if !ex.it.Valid() {
			ex.it.Close()
			ex.it = nil
			ex.stage++
			continue
		}
		item := ex.it.Item()
		v, err := ex.value(item)
		if err != nil {
			return nil, fmt.Errorf("export key %x: %w", item.Key(), err)
		}
		pair := exportPair{key: item.KeyCopy(nil), value: v, expires: item.ExpiresAt()}
		ex.it.Next() // a pair that does not fit is carried to the next chunk
		if !add(pair) {
			break
		}
	}
	if len(pairs) == 0 {
		return nil, io.EOF
	}
	return encodeExportChunk(pairs), nil
}

// value is item's value as exported: a message's record, whether it is
// stored as one or as a reference to its entry (refs.go), which a peer's
// log does not have at that index.
func (ex *Export) value(item *badger.Item) ([]byte, error) {
	if exportStages[ex.stage] != kindMessage {
		return item.ValueCopy(nil)
	}
	info, err := decodeMessageKey(item.Key())
	if err != nil {
		return nil, err
	}
	return ex.refs.record(item, info)
}

// prefix is the prefix of the exported keys of kind.
func (ex *Export) prefix(kind byte) []byte {
	if kind == kindAckedID {
		return topicPrefix(kind, ex.tid)
	}
	return partitionPrefix(kind, ex.tid, ex.part)
}

// Close releases the read transaction. Safe to call more than once.
func (ex *Export) Close() {
	if ex.it != nil {
		ex.it.Close()
		ex.it = nil
	}
	if ex.txn != nil {
		ex.txn.Discard()
		ex.txn = nil
	}
}

// importCheck checks the pairs of an export of partition part of topic tid,
// chunk after chunk: the meta first, with an applied index of at least
// minApplied; then only keys of the partition (or the topic's acked ids),
// well formed and in ascending order; messages exactly at the offsets first
// to head-1, their publish times never going back and their sizes adding
// up to the meta's bytes. It is pure: Import writes what it passes.
type importCheck struct {
	tid, part  uint32
	minApplied uint64
	meta       *partitionMeta // nil until the meta pair came
	last       []byte         // the last key after the meta
	next       uint64         // the offset the next message must have
	lastTime   int64          // the publish time of the last message, unix ns; MinInt64 before the first
	bytes      uint64         // the record bytes of the messages so far
	scratch    Message
}

// errExport wraps ErrInvalidExport with what is wrong with a pair.
func errExport(key []byte, format string, args ...any) error {
	return fmt.Errorf("export key %x: %s: %w", key, fmt.Sprintf(format, args...), ErrInvalidExport)
}

// add checks one pair.
func (c *importCheck) add(p exportPair) error {
	if c.meta == nil {
		if !bytes.Equal(p.key, partitionKey(c.tid, c.part)) {
			return errExport(p.key, "the first pair is not the meta of topic id %d partition %d", c.tid, c.part)
		}
		m, err := decodePartitionMeta(p.value)
		if err != nil {
			return errExport(p.key, "meta: %v", err)
		}
		if p.expires != 0 {
			return errExport(p.key, "meta expires")
		}
		if m.applied < c.minApplied {
			return errExport(p.key, "applied index %d is below %d", m.applied, c.minApplied)
		}
		c.meta, c.next, c.lastTime = &m, m.first, math.MinInt64
		return nil
	}
	if c.last != nil && bytes.Compare(p.key, c.last) <= 0 {
		return errExport(p.key, "not after the previous key %x", c.last)
	}
	c.last = p.key
	if len(p.key) < 1 {
		return errExport(p.key, "empty")
	}
	switch p.key[0] {
	case kindAckedID:
		if !bytes.HasPrefix(p.key, topicPrefix(kindAckedID, c.tid)) || len(p.key) < 9 || len(p.key) > 9+MaxIDBytes {
			return errExport(p.key, "not an acked id of topic id %d", c.tid)
		}
		if len(p.value) != 0 {
			return errExport(p.key, "acked id with a value")
		}
		return nil
	case kindCursor:
		if !bytes.HasPrefix(p.key, partitionPrefix(kindCursor, c.tid, c.part)) || (len(p.key) != partitionPrefixLen+4 && !isEpochKey(p.key)) {
			return errExport(p.key, "not a cursor of the partition")
		}
		if isEpochKey(p.key) && len(p.value) != 8 {
			return errExport(p.key, "epoch of %d bytes", len(p.value))
		}
	case kindMessage:
		info, err := decodeMessageKey(p.key)
		switch {
		case err != nil || info.tid != c.tid || info.part != c.part:
			return errExport(p.key, "not a message of the partition")
		case info.offset != c.next || info.offset >= c.meta.head:
			return errExport(p.key, "message at offset %d, want %d below head %d", info.offset, c.next, c.meta.head)
		case info.publishTime.UnixNano() < c.lastTime:
			return errExport(p.key, "publish time goes back")
		case int(info.size) != len(p.value):
			return errExport(p.key, "record of %d bytes, the key says %d", len(p.value), info.size)
		}
		if err := decodeMessageRecord(p.value, &c.scratch); err != nil {
			return errExport(p.key, "record: %v", err)
		}
		c.next++
		c.lastTime = info.publishTime.UnixNano()
		c.bytes += uint64(info.size)
	default:
		return errExport(p.key, "not a kind of key an export has")
	}
	if p.expires != 0 {
		return errExport(p.key, "only acked ids expire")
	}
	return nil
}

// finish checks that the export was complete.
func (c *importCheck) finish() error {
	switch {
	case c.meta == nil:
		return fmt.Errorf("export without a meta: %w", ErrInvalidExport)
	case c.next != c.meta.head:
		return fmt.Errorf("export ends at offset %d, its meta's head is %d: %w", c.next, c.meta.head, ErrInvalidExport)
	case c.bytes != c.meta.bytes:
		return fmt.Errorf("export's messages hold %d bytes, its meta says %d: %w", c.bytes, c.meta.bytes, ErrInvalidExport)
	case c.next > c.meta.first && c.lastTime > c.meta.lastTime.UnixNano():
		return fmt.Errorf("export's last message is newer than its meta's last time: %w", ErrInvalidExport)
	}
	return nil
}
