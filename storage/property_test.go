package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrymq/ferry/internal/clock"
)

// The property test drives a Store and propModel, a plain in-memory log,
// with the same random operations and checks after every step that they
// agree. Each sequence has its own seed, fixed and logged; replay a failure
// with the seed its message names:
//
//	FERRY_PROPERTY_SEED=12 FERRY_PROPERTY_ITERS=1 go test -run TestPropertyStoreMatchesModel -v ./storage
//
// FERRY_PROPERTY_SEED sets the first sequence's seed (sequence i uses seed+i)
// and FERRY_PROPERTY_ITERS the number of sequences.
const (
	propertySeed      = 1
	propertySequences = 12
	propertySteps     = 80
)

func TestPropertyStoreMatchesModel(t *testing.T) {
	forEachSeed(t, propertySequences, propertySteps, func(t *testing.T, seed uint64) {
		runProperty(t, seed, propertySteps)
	})
}

// forEachSeed runs sequences property sequences of steps steps, the seed
// of sequence i being the first seed plus i: propertySeed, or
// FERRY_PROPERTY_SEED; FERRY_PROPERTY_ITERS overrides sequences.
func forEachSeed(t *testing.T, sequences, steps int, run func(t *testing.T, seed uint64)) {
	seed := uint64(propertySeed)
	if v := os.Getenv("FERRY_PROPERTY_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_PROPERTY_SEED=%q: %v", v, err)
		}
		seed = n
	}
	if v := os.Getenv("FERRY_PROPERTY_ITERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FERRY_PROPERTY_ITERS=%q: want a positive integer", v)
		}
		sequences = n
	}
	t.Logf("seed %d, %d sequences of %d steps", seed, sequences, steps)
	for i := range uint64(sequences) {
		sq := seed + i
		t.Run(fmt.Sprintf("seed=%d", sq), func(t *testing.T) { run(t, sq) })
	}
}

// propRun is one random sequence: the store under test, the model and the
// trace of steps so far, which a failure prints.
type propRun struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	clk   *clock.Fake
	opts  Options
	s     *Store
	m     *propModel
	step  int
	trace []string
	stats propStats
	// uniform makes every record propRecordSize bytes and the byte limit a
	// multiple of it, so retention meets its boundary exactly.
	uniform bool
	gc      bool // value-log GC runs every minute of clk
}

const propRecordSize = 64

// propStats counts what a sequence exercised, so a weak generator shows.
type propStats struct {
	stored, duplicates, trimmed, outOfRange, reopens int
}

const propTopic = "prop"

func runProperty(t *testing.T, seed uint64, steps int) {
	r := &propRun{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), clk: clock.NewFake(t0)}
	r.opts = testOptions(t, r.clk)
	// Background retention runs inside clk.Advance and is modelled; off,
	// only explicit EnforceRetention calls trim.
	r.opts.RetentionInterval = []time.Duration{10 * time.Second, 45 * time.Second, 1000 * time.Hour}[r.rng.IntN(3)]
	// Value-log GC runs inside clk.Advance in half the runs. It can bring
	// a trimmed message key back below first (sweep.go), which nothing
	// reads; with it off, every key below first counts as a failed trim.
	r.gc = r.rng.IntN(2) == 0
	if !r.gc {
		r.opts.GCInterval = 1000 * time.Hour
	}
	if r.rng.IntN(2) == 0 {
		r.opts.Fsync = FsyncNever
	}
	// Reads come from the tail cache or from Badger; a tiny cache mixes
	// both and evicts all the time.
	r.opts.TailCacheBytes = []int{0, 2000, 1 << 20}[r.rng.IntN(3)]
	r.uniform = r.rng.IntN(3) == 0
	cfg := randomTopicConfig(r.rng, r.uniform)
	r.s = openStore(t, r.opts)
	topic, err := r.s.CreateTopic(context.Background(), propTopic, cfg)
	if err != nil {
		t.Fatalf("seed %d: CreateTopic(%+v): %v", seed, cfg, err)
	}
	r.m = newPropModel(topic.Config, r.clk.Now(), r.opts.RetentionInterval)
	r.logf("config %+v, retention interval %v, value-log GC %v, fsync %v, tail cache %d bytes, uniform records %v",
		topic.Config, r.opts.RetentionInterval, r.gc, r.opts.Fsync, r.opts.TailCacheBytes, r.uniform)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with FERRY_PROPERTY_SEED=%d FERRY_PROPERTY_ITERS=1; steps:\n%s", seed, strings.Join(r.trace, "\n"))
		}
	})

	for r.step = 1; r.step <= steps; r.step++ {
		switch n := r.rng.IntN(100); {
		case n < 45:
			r.append()
		case n < 65:
			r.advance()
		case n < 77:
			r.enforce()
		case n < 82:
			r.reopen()
		default:
			r.read()
		}
		r.check()
	}
	r.stats.stored, r.stats.trimmed = 0, 0
	for _, p := range r.m.parts {
		r.stats.stored += int(p.head)
		r.stats.trimmed += int(p.first)
	}
	t.Logf("%d stored, %d duplicates, %d trimmed, %d out-of-range reads, %d reopens",
		r.stats.stored, r.stats.duplicates, r.stats.trimmed, r.stats.outOfRange, r.stats.reopens)
}

func (r *propRun) logf(format string, args ...any) {
	r.trace = append(r.trace, fmt.Sprintf("%3d ", r.step)+fmt.Sprintf(format, args...))
}

func (r *propRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d step %d: %s", r.seed, r.step, fmt.Sprintf(format, args...))
}

// randomTopicConfig mixes the retention limits, each possibly unlimited.
// Ages and windows are whole seconds, like the clock's steps, so boundaries
// (exactly a window old) are hit.
func randomTopicConfig(rng *rand.Rand, uniform bool) TopicConfig {
	cfg := TopicConfig{
		Partitions:  uint32(1 + rng.IntN(3)),
		DedupWindow: []time.Duration{30 * time.Second, time.Minute, 0}[rng.IntN(3)],
	}
	if rng.IntN(2) == 0 {
		cfg.RetentionMaxMessages = uint64(1 + rng.IntN(20))
	}
	if rng.IntN(2) == 0 {
		if uniform {
			cfg.RetentionMaxBytes = propRecordSize * uint64(1+rng.IntN(12))
		} else {
			cfg.RetentionMaxBytes = uint64(200 + rng.IntN(3000))
		}
	}
	if rng.IntN(2) == 0 {
		cfg.RetentionMaxAge = []time.Duration{30 * time.Second, time.Minute, time.Duration(30+rng.IntN(270)) * time.Second}[rng.IntN(3)]
	}
	return cfg
}

// randomMessage draws ids from a small pool so duplicates happen; a quarter
// of messages have no id; an eighth carry a larger payload. A uniform
// message has no key or headers and a payload that makes its record
// propRecordSize bytes.
func randomMessage(rng *rand.Rand, uniform bool) Message {
	var m Message
	if rng.IntN(4) > 0 {
		m.ID = "id-" + strconv.Itoa(rng.IntN(8))
	}
	if uniform {
		m.Payload = randomBytes(rng, propRecordSize-messageRecordSize(&m))
		return m
	}
	switch rng.IntN(10) {
	case 0, 1, 2:
	case 3:
		m.Key = []byte{}
	default:
		m.Key = randomBytes(rng, 1+rng.IntN(16))
	}
	switch rng.IntN(10) {
	case 0, 1, 2, 3, 4:
	case 5:
		m.Headers = map[string]string{}
	default:
		m.Headers = map[string]string{}
		names := []string{"a", "trace-id", "ünï", ""}
		for range 1 + rng.IntN(3) {
			m.Headers[names[rng.IntN(len(names))]] = string(randomBytes(rng, rng.IntN(12)))
		}
	}
	if rng.IntN(8) == 0 {
		m.Payload = randomBytes(rng, 600+rng.IntN(600))
	} else {
		m.Payload = randomBytes(rng, rng.IntN(300))
	}
	return m
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func (r *propRun) append() {
	part := uint32(r.rng.IntN(len(r.m.parts)))
	msgs := make([]Message, 1+r.rng.IntN(5))
	ids := make([]string, len(msgs))
	for i := range msgs {
		msgs[i] = randomMessage(r.rng, r.uniform)
		ids[i] = strconv.Quote(msgs[i].ID)
	}
	r.logf("append partition %d ids %v", part, ids)
	want := r.m.append(part, msgs)
	got, err := r.s.Append(context.Background(), propTopic, part, msgs)
	if err != nil {
		r.fatalf("Append: %v", err)
	}
	if !slices.Equal(got, want) {
		r.fatalf("Append results %v, model says %v", got, want)
	}
	for _, a := range got {
		if a.Duplicate {
			r.stats.duplicates++
		}
	}
}

// advance moves the clock 0-90s, half the time by exactly a limit so an
// entry or message becomes exactly a window or max age old.
func (r *propRun) advance() {
	d := time.Duration(r.rng.IntN(91)) * time.Second
	if r.rng.IntN(2) == 0 {
		d = []time.Duration{r.m.cfg.DedupWindow, r.m.cfg.RetentionMaxAge, time.Second, 10 * time.Second}[r.rng.IntN(4)]
	}
	r.logf("advance %v", d)
	r.m.advance(d)
	r.clk.Advance(d)
	if !r.clk.Now().Equal(r.m.now) {
		r.fatalf("clock at %v, model at %v", r.clk.Now(), r.m.now)
	}
}

func (r *propRun) enforce() {
	r.logf("enforce retention")
	r.m.enforce(r.m.now)
	if err := r.s.EnforceRetention(context.Background()); err != nil {
		r.fatalf("EnforceRetention: %v", err)
	}
}

func (r *propRun) reopen() {
	r.logf("close and reopen")
	if err := r.s.Close(context.Background()); err != nil {
		r.fatalf("Close: %v", err)
	}
	r.s = openStore(r.t, r.opts)
	r.m.reopen()
	r.stats.reopens++
}

func (r *propRun) read() {
	part := uint32(r.rng.IntN(len(r.m.parts)))
	p := r.m.parts[part]
	lo, hi := p.first-min(p.first, 2), p.head+2 // a little out of range both ways
	from := lo + r.rng.Uint64N(hi-lo+1)
	maxMessages := r.rng.IntN(12)
	maxBytes := []int{0, 1, 100, 500, 1 << 30, -1}[r.rng.IntN(6)]
	if maxBytes == -1 { // exactly the records of the next few messages, or one byte short
		maxBytes = -r.rng.IntN(2)
		for off := from; off < min(p.head, from+1+r.rng.Uint64N(4)); off++ {
			if off >= p.first {
				maxBytes += messageRecordSize(&p.msgs[off])
			}
		}
	}
	r.logf("read partition %d from %d max %d messages %d bytes", part, from, maxMessages, maxBytes)
	r.checkRead(part, from, maxMessages, maxBytes)
}

// check compares everything the store tells about its state with the model:
// partition stats, key counts (nothing leaks) and every retained message.
func (r *propRun) check() {
	r.t.Helper()
	infos, err := r.s.Partitions(propTopic)
	if err != nil {
		r.fatalf("Partitions: %v", err)
	}
	if want := r.m.infos(); !slices.Equal(infos, want) {
		r.fatalf("Partitions = %+v, model says %+v", infos, want)
	}
	for part, p := range r.m.parts {
		below, in := r.messageKeys(uint32(part), p.first)
		if in != int(p.head-p.first) || (!r.gc && below > 0) {
			r.fatalf("partition %d: %d message keys from first %d, %d below it; model holds %d messages",
				part, in, p.first, below, p.head-p.first)
		}
	}
	for part, p := range r.m.parts {
		r.checkRead(uint32(part), p.first, int(p.head-p.first)+1, 1<<30)
	}
}

// messageKeys counts the message keys of a partition below first and from
// first on.
func (r *propRun) messageKeys(part uint32, first uint64) (below, from int) {
	r.t.Helper()
	err := r.s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = partitionPrefix(kindMessage, r.s.topics[propTopic].topic.id, part)
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			info, err := decodeMessageKey(it.Item().Key())
			if err != nil {
				return err
			}
			if info.offset < first {
				below++
			} else {
				from++
			}
		}
		return nil
	})
	if err != nil {
		r.fatalf("count message keys: %v", err)
	}
	return below, from
}

func (r *propRun) checkRead(part uint32, from uint64, maxMessages, maxBytes int) {
	r.t.Helper()
	want, wantErr := r.m.parts[part].read(from, maxMessages, maxBytes)
	got, err := r.s.Read(context.Background(), propTopic, part, from, maxMessages, maxBytes)
	if wantErr != nil {
		var oor *OffsetOutOfRangeError
		if !errors.As(err, &oor) || *oor != *wantErr {
			r.fatalf("Read(partition %d, from %d) error %v, model says %v", part, from, err, wantErr)
		}
		r.stats.outOfRange++
		return
	}
	if err != nil {
		r.fatalf("Read(partition %d, from %d, %d, %d): %v", part, from, maxMessages, maxBytes, err)
	}
	if len(got) != len(want) {
		r.fatalf("Read(partition %d, from %d, %d, %d) returned %d messages, model says %d",
			part, from, maxMessages, maxBytes, len(got), len(want))
	}
	for i := range want {
		if d := diffMessage(got[i], want[i]); d != "" {
			r.fatalf("Read(partition %d, from %d) message %d: %s", part, from, i, d)
		}
	}
}

func diffMessage(got, want Message) string {
	var d []string
	if got.ID != want.ID {
		d = append(d, fmt.Sprintf("id %q, want %q", got.ID, want.ID))
	}
	if !bytes.Equal(got.Key, want.Key) {
		d = append(d, fmt.Sprintf("key %x, want %x", got.Key, want.Key))
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		d = append(d, fmt.Sprintf("payload %d bytes %.32x, want %d bytes %.32x", len(got.Payload), got.Payload, len(want.Payload), want.Payload))
	}
	if !maps.Equal(got.Headers, want.Headers) {
		d = append(d, fmt.Sprintf("headers %q, want %q", got.Headers, want.Headers))
	}
	if got.Partition != want.Partition || got.Offset != want.Offset {
		d = append(d, fmt.Sprintf("at %d/%d, want %d/%d", got.Partition, got.Offset, want.Partition, want.Offset))
	}
	if !got.PublishTime.Equal(want.PublishTime) || got.PublishTime.Location() != time.UTC {
		d = append(d, fmt.Sprintf("publish time %v, want %v", got.PublishTime, want.PublishTime))
	}
	return strings.Join(d, "; ")
}

// propModel is the log as the storage package documents it, kept in plain
// slices and maps: no keys, no transactions, no goroutines.
type propModel struct {
	cfg      TopicConfig
	now      time.Time
	interval time.Duration // background retention period
	nextTick time.Time     // when the background retention pass next runs
	parts    []*modelPartition
}

type modelPartition struct {
	part        uint32
	first, head uint64
	msgs        []Message // every message ever stored, at its offset
	lastTime    time.Time
	// dedup maps an id to its latest store. Whether it still counts is a
	// matter of time alone; a reopen forgets ids whose message retention
	// removed (the store rebuilds its index from retained message keys).
	dedup map[string]modelDedup
}

type modelDedup struct {
	offset uint64
	time   time.Time
}

func newPropModel(cfg TopicConfig, now time.Time, interval time.Duration) *propModel {
	m := &propModel{cfg: cfg, now: now, interval: interval, nextTick: now.Add(interval)}
	for part := range cfg.Partitions {
		m.parts = append(m.parts, &modelPartition{part: part, dedup: map[string]modelDedup{}})
	}
	return m
}

// append stores msgs as the store must: an id published less than the dedup
// window ago, in an earlier append or earlier in this batch, is a duplicate
// of its original offset and is not stored.
func (m *propModel) append(part uint32, msgs []Message) []AppendResult {
	p := m.parts[part]
	t := m.now
	if t.Before(p.lastTime) {
		t = p.lastTime
	}
	res := make([]AppendResult, len(msgs))
	for i, msg := range msgs {
		if msg.ID != "" {
			if e, ok := p.dedup[msg.ID]; ok && t.Sub(e.time) < m.cfg.DedupWindow {
				res[i] = AppendResult{Offset: e.offset, Duplicate: true}
				continue
			}
		}
		stored := Message{
			ID:          msg.ID,
			Key:         bytes.Clone(msg.Key),
			Payload:     bytes.Clone(msg.Payload),
			Headers:     maps.Clone(msg.Headers),
			Partition:   part,
			Offset:      p.head,
			PublishTime: t,
		}
		p.msgs = append(p.msgs, stored)
		if msg.ID != "" {
			p.dedup[msg.ID] = modelDedup{offset: p.head, time: t}
		}
		res[i] = AppendResult{Offset: p.head}
		p.head++
	}
	p.lastTime = t
	return res
}

// advance moves time on by d, running the background retention passes that
// come due on the way at their own times, as the fake clock does.
func (m *propModel) advance(d time.Duration) {
	end := m.now.Add(d)
	for !m.nextTick.After(end) {
		m.now = m.nextTick
		m.enforce(m.now)
		m.nextTick = m.now.Add(m.interval)
	}
	m.now = end
}

// reopen restarts the background retention timer, as Open does, and
// forgets the ids of messages retention removed.
func (m *propModel) reopen() {
	m.nextTick = m.now.Add(m.interval)
	for _, p := range m.parts {
		maps.DeleteFunc(p.dedup, func(_ string, e modelDedup) bool { return e.offset < p.first })
	}
}

// enforce is one retention pass at now: keep at most RetentionMaxMessages,
// then drop the oldest while they are RetentionMaxAge old or the partition
// holds more than RetentionMaxBytes; and forget ids a window old.
func (m *propModel) enforce(now time.Time) {
	c := m.cfg
	for _, p := range m.parts {
		keep := p.first
		if n := c.RetentionMaxMessages; n > 0 && p.head-p.first > n {
			keep = p.head - n
		}
		var bytes uint64
		for off := keep; off < p.head; off++ {
			bytes += uint64(messageRecordSize(&p.msgs[off]))
		}
		for ; keep < p.head; keep++ {
			msg := &p.msgs[keep]
			tooOld := c.RetentionMaxAge > 0 && now.Sub(msg.PublishTime) >= c.RetentionMaxAge
			tooBig := c.RetentionMaxBytes > 0 && bytes > c.RetentionMaxBytes
			if !tooOld && !tooBig {
				break
			}
			bytes -= uint64(messageRecordSize(msg))
		}
		p.first = keep
		maps.DeleteFunc(p.dedup, func(_ string, e modelDedup) bool { return now.Sub(e.time) >= c.DedupWindow })
	}
}

func (m *propModel) infos() []PartitionInfo {
	infos := make([]PartitionInfo, len(m.parts))
	for i, p := range m.parts {
		var bytes uint64
		for off := p.first; off < p.head; off++ {
			bytes += uint64(messageRecordSize(&p.msgs[off]))
		}
		infos[i] = PartitionInfo{Partition: p.part, First: p.first, Head: p.head, Messages: p.head - p.first, Bytes: bytes}
	}
	return infos
}

// read is Read's contract: out of range below first or beyond head; at most
// maxMessages whose records add up to at most maxBytes, except that the
// first is returned whatever its size.
func (p *modelPartition) read(from uint64, maxMessages, maxBytes int) ([]Message, *OffsetOutOfRangeError) {
	if from < p.first || from > p.head {
		return nil, &OffsetOutOfRangeError{Offset: from, First: p.first, Head: p.head}
	}
	var out []Message
	bytes := 0
	for off := from; off < p.head && len(out) < maxMessages; off++ {
		size := messageRecordSize(&p.msgs[off])
		if len(out) > 0 && bytes+size > maxBytes {
			break
		}
		out = append(out, p.msgs[off])
		bytes += size
	}
	return out, nil
}
