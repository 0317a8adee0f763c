package storage

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/ferrymq/ferry/internal/clock"
)

// Fuzz targets for every decoder of stored bytes and for topic names. Plain
// `go test` runs the seeds below; to search further:
//
//	go test -run '^$' -fuzz FuzzDecodeMessageRecord -fuzztime 30s ./storage
//
// A decoder must never panic, must fail only with ErrCorrupt, and whatever
// it accepts must encode back to the same thing. The fixed-width decoders
// accept exactly one encoding per value, so for them re-encoding gives back
// the input byte for byte.

// seedMessages are the messages whose records seed the record targets.
var seedMessages = []Message{
	{Payload: []byte{}},
	{ID: "order-1", Key: []byte("k"), Payload: []byte("hello")},
	{ID: "a", Headers: map[string]string{"trace": "1", "": "", "ünï": "v"}, Payload: []byte{0, 1, 2}},
	{Key: bytes.Repeat([]byte{0xff}, 200), Payload: bytes.Repeat([]byte("p"), 600)},
}

func FuzzDecodeMessageRecord(f *testing.F) {
	for i := range seedMessages {
		rec := appendMessageRecord(nil, &seedMessages[i])
		f.Add(rec)
		f.Add(rec[:len(rec)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{recordVersion, 0x80})                                     // truncated varint
	f.Add([]byte{recordVersion, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})       // huge header count
	f.Add([]byte{recordVersion, 0, 0, 2, 1, 'a', 0, 1, 'a', 1, 'b', 'p'})  // a header name twice
	f.Add([]byte{recordVersion, 0x80, 0x00, 0, 0, 'x'})                    // non-minimal varint
	f.Add([]byte{recordVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // id longer than the record
	f.Fuzz(func(t *testing.T, v []byte) {
		in := bytes.Clone(v)
		var m Message
		if err := decodeMessageRecord(in, &m); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		// The message owns its bytes: Badger may reuse the value after the
		// transaction.
		for i := range in {
			in[i] ^= 0xff
		}
		var again Message
		if err := decodeMessageRecord(v, &again); err != nil {
			t.Fatalf("second decode of %x: %v", v, err)
		}
		if d := diffMessage(m, again); d != "" {
			t.Fatalf("decoded message changed with its input %x: %s", v, d)
		}
		checkRecordRoundTrip(t, &m)
	})
}

func FuzzMessageRecordRoundTrip(f *testing.F) {
	f.Add("", []byte(nil), []byte(nil), "", "", false)
	f.Add("order-1", []byte("key"), []byte("payload"), "trace", "abc", true)
	f.Add("x", []byte{}, bytes.Repeat([]byte{0}, 300), "", "", true)
	f.Add(strings.Repeat("i", 200), []byte{0xff}, []byte{1}, "h\x00", "\xff\xfe", true)
	f.Fuzz(func(t *testing.T, id string, key, payload []byte, name, value string, headers bool) {
		m := Message{ID: id, Key: key, Payload: payload}
		if headers {
			// Two headers (one when name == value) so the sort by name matters.
			m.Headers = map[string]string{name: value, value: name}
		}
		checkRecordRoundTrip(t, &m)
	})
}

// checkRecordRoundTrip encodes m, decodes the record and checks the same
// message comes back, and that encoding is deterministic and sized right.
func checkRecordRoundTrip(t *testing.T, m *Message) {
	t.Helper()
	rec := appendMessageRecord(nil, m)
	if n := messageRecordSize(m); n != len(rec) {
		t.Fatalf("messageRecordSize = %d, record is %d bytes", n, len(rec))
	}
	got := Message{ID: m.ID} // the id travels in the key, not the record
	if err := decodeMessageRecord(rec, &got); err != nil {
		t.Fatalf("decode of encoded %+v: %v", *m, err)
	}
	if d := diffMessage(got, *m); d != "" {
		t.Fatalf("round trip of %+v: %s", *m, d)
	}
	if again := appendMessageRecord(nil, &got); !bytes.Equal(again, rec) {
		t.Fatalf("re-encoding gave %x, first encoding %x", again, rec)
	}
}

func FuzzDecodeMessageKey(f *testing.F) {
	f.Add(messageKey(1, 0, 0, t0, 10, ""))
	f.Add(messageKey(1, 0, 0, t0, 10, "order-1"))
	f.Add(messageKey(math.MaxUint32, math.MaxUint32, math.MaxUint64, time.Unix(0, math.MinInt64), math.MaxUint32, strings.Repeat("i", MaxIDBytes)))
	f.Add(messageKey(7, 3, 1<<40, time.Unix(0, -1), 0, strings.Repeat("i", MaxIDBytes+1)))
	f.Add(messageSeekKey(1, 0, 5))
	f.Add([]byte{kindMessage})
	f.Add(append([]byte{kindPartition}, messageKey(1, 0, 0, t0, 10, "x")[1:]...))
	f.Fuzz(func(t *testing.T, k []byte) {
		info, err := decodeMessageKey(k)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", k, err)
			}
			if len(k) >= messageKeyLen && len(k) <= messageKeyLen+MaxIDBytes && k[0] == kindMessage {
				t.Fatalf("decode of well-formed key %x: %v", k, err)
			}
			return
		}
		if got := messageKey(info.tid, info.part, info.offset, info.publishTime, info.size, info.id); !bytes.Equal(got, k) {
			t.Fatalf("key %x decodes to %+v, which encodes to %x", k, info, got)
		}
		if info.publishTime.Location() != time.UTC {
			t.Fatalf("publish time %v not in UTC", info.publishTime)
		}
	})
}

func FuzzDecodeTopicRecord(f *testing.F) {
	topics := []Topic{
		{Name: "orders", Config: TopicConfig{}.WithDefaults(), CreateTime: t0, id: 1},
		{Name: "t", Config: TopicConfig{Partitions: MaxPartitions, RetentionMaxAge: time.Hour, RetentionMaxBytes: 1 << 40,
			RetentionMaxMessages: 5, DedupWindow: MaxDedupWindow, MaxMessageBytes: MaxMessageBytesLimit}, CreateTime: time.Unix(0, -1).UTC(), id: math.MaxUint32},
		{Name: "bad", Config: TopicConfig{}, CreateTime: t0, id: 2}, // zero config: invalid
	}
	for i := range topics {
		rec := encodeTopicRecord(&topics[i])
		f.Add(topics[i].Name, rec)
		f.Add(topics[i].Name, rec[:len(rec)-1])
		f.Add(topics[i].Name, append(rec, 0))
	}
	f.Add("", []byte{})
	f.Fuzz(func(t *testing.T, name string, v []byte) {
		tp, err := decodeTopicRecord(name, v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		if tp.Name != name {
			t.Fatalf("name %q, want %q", tp.Name, name)
		}
		if err := tp.Config.Validate(); err != nil {
			t.Fatalf("decoded an invalid config %+v: %v", tp.Config, err)
		}
		if got := encodeTopicRecord(&tp); !bytes.Equal(got, v) {
			t.Fatalf("record %x decodes to %+v, which encodes to %x", v, tp, got)
		}
	})
}

func FuzzDecodePartitionMeta(f *testing.F) {
	for _, pm := range []partitionMeta{
		{},
		{first: 3, head: 10, bytes: 700, lastTime: t0},
		{first: math.MaxUint64, head: math.MaxUint64, bytes: math.MaxUint64, lastTime: time.Unix(0, math.MinInt64).UTC()},
		{first: 2, head: 1}, // first beyond head: corrupt
		{first: 3, head: 10, bytes: 700, lastTime: t0, applied: 40, pin: 31, pinOff: 4},
		{first: 3, head: 10, applied: 40, pin: 41, pinOff: 4},  // pins beyond what it applied: corrupt
		{first: 3, head: 10, applied: 40, pin: 31, pinOff: 10}, // pins a message beyond head: corrupt
	} {
		v := pm.encode()
		f.Add(v)
		f.Add(v[:len(v)-1])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		pm, err := decodePartitionMeta(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		if pm.first > pm.head {
			t.Fatalf("decoded first %d > head %d", pm.first, pm.head)
		}
		if pm.pin != 0 && (pm.pin > pm.applied || pm.pinOff < pm.first || pm.pinOff >= pm.head) {
			t.Fatalf("decoded pin %d at %d, applied %d, first %d, head %d", pm.pin, pm.pinOff, pm.applied, pm.first, pm.head)
		}
		if got := pm.encode(); !bytes.Equal(got, v) {
			t.Fatalf("meta %x decodes to %+v, which encodes to %x", v, pm, got)
		}
	})
}

// FuzzDecodeMessageRef: whatever an m key's value holds, a reference
// decodes without panicking, to a group, index, skip and place in range,
// which encode to a reference that decodes to the same (a varint need not
// be minimal); anything else is ErrCorrupt.
func FuzzDecodeMessageRef(f *testing.F) {
	for _, r := range []struct {
		ref entryRef
		n   int
	}{
		{entryRef{group: 1, index: 1}, 0},
		{entryRef{group: 1<<32 | 5, index: 1 << 40, skip: 17}, 399},
		{entryRef{group: math.MaxUint64, index: math.MaxUint64, skip: maxEntrySkip}, 1 << 31},
		{entryRef{group: 0, index: 3}, 0},                         // no group: corrupt
		{entryRef{group: 1, index: 3, skip: maxEntrySkip + 1}, 0}, // skip too long: corrupt
	} {
		v := appendMessageRef(nil, r.ref, r.n)
		f.Add(v)
		f.Add(v[:len(v)-1])
	}
	f.Add([]byte{refVersion})
	f.Add([]byte{recordVersion, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		ref, n, err := decodeMessageRef(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		if !isMessageRef(v) || ref.group == 0 || ref.index == 0 || ref.skip < 0 || ref.skip > maxEntrySkip || n < 0 || n > 1<<31 {
			t.Fatalf("%x decodes to %+v, message %d", v, ref, n)
		}
		again, m, err := decodeMessageRef(appendMessageRef(nil, ref, n))
		if err != nil || again != ref || m != n {
			t.Fatalf("reference %x decodes to %+v, message %d, which encodes to one that decodes to %+v, %d, %v", v, ref, n, again, m, err)
		}
	})
}

func FuzzDecodeTombstoneKey(f *testing.F) {
	f.Add(tombstoneKey(1))
	f.Add(tombstoneKey(math.MaxUint32))
	f.Add(tombstoneKey(1)[:4])
	f.Add(append(tombstoneKey(1), 0))
	f.Add(append([]byte{kindTopic}, tombstoneKey(1)[1:]...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, k []byte) {
		tid, err := decodeTombstoneKey(k)
		wellFormed := len(k) == 5 && k[0] == kindTombstone
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || wellFormed {
				t.Fatalf("decode %x: %v", k, err)
			}
			return
		}
		if got := tombstoneKey(tid); !bytes.Equal(got, k) {
			t.Fatalf("key %x decodes to %d, which encodes to %x", k, tid, got)
		}
	})
}

func FuzzDecodeRaftBounds(f *testing.F) {
	for _, rb := range []raftBounds{
		{},
		{prev: 3, prevTerm: 2, last: 10},
		{prev: math.MaxUint64, prevTerm: math.MaxUint64, last: math.MaxUint64},
		{prev: 2, last: 1}, // prev beyond last: corrupt
	} {
		v := rb.encode()
		f.Add(v)
		f.Add(v[:len(v)-1])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		rb, err := decodeRaftBounds(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		if rb.prev > rb.last {
			t.Fatalf("decoded prev %d > last %d", rb.prev, rb.last)
		}
		if got := rb.encode(); !bytes.Equal(got, v) {
			t.Fatalf("bounds %x decode to %+v, which encode to %x", v, rb, got)
		}
	})
}

func FuzzDecodeRaftEntryKey(f *testing.F) {
	f.Add(raftEntryKey(1, 0))
	f.Add(raftEntryKey(math.MaxUint64, math.MaxUint64))
	f.Add(raftEntryKey(1, 5)[:raftEntryKeyLen-1])
	f.Add(append(raftEntryKey(1, 5), 0))
	f.Add(raftKey(1, raftKeyHardState))
	f.Add(append(raftKey(1, raftKeySnapshot), raftEntryKey(1, 5)[raftKeyLen:]...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, k []byte) {
		group, index, err := decodeRaftEntryKey(k)
		wellFormed := len(k) == raftEntryKeyLen && k[0] == kindRaft && k[9] == raftKeyEntry
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || wellFormed {
				t.Fatalf("decode %x: %v", k, err)
			}
			return
		}
		if got := raftEntryKey(group, index); !bytes.Equal(got, k) {
			t.Fatalf("key %x decodes to group %d index %d, which encode to %x", k, group, index, got)
		}
	})
}

func FuzzDecodeRaftEntry(f *testing.F) {
	for _, e := range []*raftpb.Entry{
		{},
		{Index: new(uint64(7)), Term: new(uint64(3)), Type: raftpb.EntryConfChange.Enum(), Data: []byte("cc")},
		{Index: new(uint64(math.MaxUint64)), Term: new(uint64(math.MaxUint64)), Data: []byte{}},
	} {
		v, _ := proto.Marshal(e)
		f.Add(e.GetIndex(), v)
		f.Add(e.GetIndex()+1, v)
		if len(v) > 0 {
			f.Add(e.GetIndex(), v[:len(v)-1])
		}
	}
	f.Add(uint64(0), []byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, index uint64, v []byte) {
		in := bytes.Clone(v)
		e, err := decodeRaftEntry(index, in)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode %x: %v, want ErrCorrupt", v, err)
			}
			return
		}
		if e.GetIndex() != index {
			t.Fatalf("entry under index %d decoded with index %d", index, e.GetIndex())
		}
		// The entry owns its bytes: Badger may reuse the value.
		for i := range in {
			in[i] ^= 0xff
		}
		again, err := decodeRaftEntry(index, v)
		if err != nil || !proto.Equal(e, again) {
			t.Fatalf("decoded entry changed with its input %x (%v)", v, err)
		}
		w, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := decodeRaftEntry(index, w); err != nil || !proto.Equal(back, e) {
			t.Fatalf("re-encoded entry %x does not decode back (%v)", w, err)
		}
	})
}

// FuzzRaftLogSave feeds Save arbitrary entries, hard states and snapshots
// on one log that lives through the run: it must never panic, must refuse
// only with the errors it documents, and a refusal must change nothing.
func FuzzRaftLogSave(f *testing.F) {
	f.Add(uint64(1), uint8(3), []byte{0, 0, 1}, uint64(2), uint64(0), uint64(0))
	f.Add(uint64(4), uint8(2), []byte{0, 1}, uint64(5), uint64(3), uint64(1))
	f.Add(uint64(9), uint8(1), []byte{}, uint64(100), uint64(0), uint64(0))             // gap, commit past the end
	f.Add(uint64(2), uint8(4), []byte{2, 0, 0, 0}, uint64(0), uint64(1), uint64(2))     // snapshot inside the log
	f.Add(uint64(math.MaxUint64), uint8(2), []byte{0}, uint64(0), uint64(0), uint64(0)) // index overflow
	opts := testOptions(f, clock.NewFake(t0))
	opts.Fsync = FsyncNever
	opts.TailCacheBytes = 512
	s := openStore(f, opts)
	l := mustRaftLog(f, s, 1)
	f.Fuzz(func(t *testing.T, from uint64, n uint8, termSteps []byte, commit, snapIndex, snapTerm uint64) {
		es := make([]*raftpb.Entry, n%16)
		term := uint64(1)
		for i := range es {
			if i < len(termSteps) {
				term += uint64(termSteps[i]) - 1 // a step of 0 lowers the term
			}
			es[i] = &raftpb.Entry{Index: new(from + uint64(i)), Term: new(term), Data: termSteps}
		}
		var hs *raftpb.HardState
		if commit > 0 {
			hs = hardState(term, 1, commit)
		}
		var snap *raftpb.Snapshot
		if snapIndex > 0 {
			snap = snapshotAt(snapIndex, snapTerm, []byte("s"), 1)
		}
		before := raftSummary(t, l)
		err := l.Save(hs, es, snap)
		switch {
		case err == nil:
			first, last := bounds(l)
			if _, terr := l.Term(last); first > last+1 || terr != nil {
				t.Fatalf("after a Save: first %d, last %d, Term(last): %v", first, last, terr)
			}
		case err == raft.ErrSnapOutOfDate, errors.Is(err, ErrInvalidRaftRequest):
			if after := raftSummary(t, l); after != before {
				t.Fatalf("refused Save (%v) changed the log:\n%s\nwas:\n%s", err, after, before)
			}
		default:
			t.Fatalf("Save: %v", err)
		}
	})
}

// raftSummary is what a Save can change, short of reading every entry: the
// bounds, the last term, the hard state and the snapshot.
func raftSummary(tb testing.TB, l *RaftLog) string {
	first, last := bounds(l)
	term, err := l.Term(last)
	hs, cs, _ := l.InitialState()
	snap, _ := l.Snapshot()
	return fmt.Sprintf("first %d last %d term %d %v hs %s cs %s snap %s", first, last, term, err, fmtHardState(hs), fmtConfState(cs), fmtSnapshot(snap))
}

// validTopicName is ValidateTopicName's contract, said another way (with
// "." and ".." refused besides).
var validTopicName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,200}$`)

func FuzzValidateTopicName(f *testing.F) {
	for _, name := range []string{
		"orders", "a", "A-Z_a.z-0.9", strings.Repeat("x", 200), strings.Repeat("x", 201),
		"", "has space", "slash/", "ünï", "tab\t", "nul\x00", "\xff", "dot.", "..", ".", "...", "-", "orders\n",
	} {
		f.Add(name)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateTopicName(name)
		want := validTopicName.MatchString(name) && name != "." && name != ".."
		if (err == nil) != want {
			t.Fatalf("ValidateTopicName(%q) = %v, want valid %v", name, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("ValidateTopicName(%q) = %v, want ErrInvalidConfig", name, err)
		}
		if err != nil && len(err.Error()) > 512 {
			t.Fatalf("ValidateTopicName of %d bytes: an error of %d bytes", len(name), len(err.Error()))
		}
	})
}

// FuzzImportChunks feeds a stream of export chunks, each a u16 length and
// the chunk, to the decoder and the check an Import runs for topic id 1
// partition 0 with a least applied index of 5: nothing panics, every
// refusal is ErrInvalidExport, what a chunk decodes to encodes back to a
// chunk that decodes the same, and an export the check accepts to the end
// is one partition's consistent state.
func FuzzImportChunks(f *testing.F) {
	stream := func(chunks ...[]byte) []byte {
		var b []byte
		for _, c := range chunks {
			b = append(b, byte(len(c)>>8), byte(len(c)))
			b = append(b, c...)
		}
		return b
	}
	rec := func(m Message) []byte { return appendMessageRecord(nil, &m) }
	r0, r1 := rec(Message{ID: "a", Payload: []byte("x")}), rec(Message{Key: []byte("k"), Payload: []byte("yz")})
	meta := partitionMeta{first: 7, head: 9, bytes: uint64(len(r0) + len(r1)), lastTime: t0.Add(time.Second), applied: 12}
	pairs := []exportPair{
		{key: partitionKey(1, 0), value: meta.encode()},
		{key: ackedIDKey(1, 2, "a"), expires: 1 << 40},
		{key: cursorKey(1, 0, 2), value: []byte("cursor")},
		{key: messageKey(1, 0, 7, t0, uint32(len(r0)), "a"), value: r0},
		{key: messageKey(1, 0, 8, t0.Add(time.Second), uint32(len(r1)), ""), value: r1},
	}
	f.Add(stream(encodeExportChunk(pairs)))
	f.Add(stream(encodeExportChunk(pairs[:2]), encodeExportChunk(pairs[2:4]), encodeExportChunk(pairs[4:])))
	f.Add(stream(encodeExportChunk(pairs[:4])))                               // a message short
	f.Add(stream(encodeExportChunk(append(pairs[:1:1], pairs[3], pairs[2])))) // out of order
	f.Add(stream(encodeExportChunk(pairs[1:])))                               // no meta
	f.Add(stream([]byte{recordVersion, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := importCheck{tid: 1, part: 0, minApplied: 5}
		err := func() error {
			for len(b) >= 2 {
				n := int(b[0])<<8 | int(b[1])
				b = b[2:]
				if n > len(b) {
					n = len(b)
				}
				chunk := b[:n]
				b = b[n:]
				pairs, err := decodeExportChunk(chunk)
				if err != nil {
					return err
				}
				again, err := decodeExportChunk(encodeExportChunk(pairs))
				if err != nil || len(again) != len(pairs) {
					t.Fatalf("chunk %x decodes to %d pairs, which encode to a chunk that decodes to %d: %v", chunk, len(pairs), len(again), err)
				}
				for i := range pairs {
					if !bytes.Equal(again[i].key, pairs[i].key) || !bytes.Equal(again[i].value, pairs[i].value) || again[i].expires != pairs[i].expires {
						t.Fatalf("pair %d does not survive a round trip", i)
					}
					if err := c.add(pairs[i]); err != nil {
						return err
					}
				}
			}
			return c.finish()
		}()
		if err != nil {
			if !errors.Is(err, ErrInvalidExport) {
				t.Fatalf("refused with %v, want ErrInvalidExport", err)
			}
			return
		}
		m := c.meta
		switch {
		case m.applied < 5:
			t.Fatalf("accepted applied index %d", m.applied)
		case c.next != m.head || c.bytes != m.bytes || m.first > m.head:
			t.Fatalf("accepted an export with messages to %d of %d bytes under meta %+v", c.next, c.bytes, *m)
		}
	})
}
