package broker

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"
)

// FuzzValidateBatch builds a batch from fuzzed fields and checks that
// validateBatch never panics and accepts it exactly when the documented
// limits (proto/ferry/v1/publisher.proto, message.proto) hold:
//
//   - 1 to 1,000 messages, none null;
//   - an id of at most 128 bytes, a key of at most 4 KiB;
//   - a payload of at most the topic's max_message_bytes;
//   - at most 64 headers and 16 KiB of header names and values;
//   - an explicit partition below the topic's partition count;
//   - at most 4 MiB of ids, keys, headers and payloads in the batch.
//
// A rejection must be an invalidError that names a rule the batch breaks.
func FuzzValidateBatch(f *testing.F) {
	// Sizes are fuzzed as pad lengths on top of short fuzzed bytes, so that
	// inputs stay small (the fuzzer crawls on megabyte inputs) while the
	// fields still reach every limit.
	type seed struct {
		id            string
		idPad         uint16
		key           []byte
		keyPad        uint16
		payload       []byte
		payloadPad    uint32
		hname, hvalue string
		hvaluePad     uint16
		nheaders      uint8
		hasPart       bool
		partition     uint32
		partitions    uint32
		maxMsg        uint32
		count         uint16
		withNil       bool
	}
	for _, s := range []seed{
		{id: "a", payload: []byte("hello"), count: 1},
		{count: 0},
		{count: 1000},
		{count: 1001},
		{idPad: 128, count: 1},
		{idPad: 129, count: 1},
		{keyPad: 4096, count: 1},
		{key: []byte("k"), keyPad: 4096, count: 1},
		{payloadPad: 1000, maxMsg: 1000, count: 1},
		{payloadPad: 1001, maxMsg: 1000, count: 1},
		{payloadPad: 1 << 20, count: 1},
		{payloadPad: 1<<20 + 1, count: 1},
		{hname: "h", hvalue: "v", nheaders: 64, count: 1},
		{hname: "h", hvalue: "v", nheaders: 65, count: 1},
		{hname: "h", hvaluePad: 8190, nheaders: 2, count: 1}, // "h0"+value twice: 16,384
		{hname: "h", hvaluePad: 8191, nheaders: 2, count: 1},
		{hasPart: true, partition: 3, partitions: 4, count: 1},
		{hasPart: true, partition: 4, partitions: 4, count: 1},
		{hasPart: true, partition: 1<<32 - 1, partitions: 1024, count: 1},
		{payloadPad: 4096, count: 1024},
		{payloadPad: 4194, count: 1000},
		{payloadPad: 4195, count: 1000},
		{payloadPad: 900 << 10, count: 5, maxMsg: 1 << 20},
		{payloadPad: 4 << 20, maxMsg: 4 << 20, count: 1},          // exactly 4 MiB
		{id: "x", payloadPad: 4 << 20, maxMsg: 4 << 20, count: 1}, // one byte over
		{payload: []byte("x"), count: 3, withNil: true},
	} {
		f.Add(s.id, s.idPad, s.key, s.keyPad, s.payload, s.payloadPad, s.hname, s.hvalue, s.hvaluePad, s.nheaders,
			s.hasPart, s.partition, s.partitions, s.maxMsg, s.count, s.withNil)
	}
	f.Fuzz(func(t *testing.T, id string, idPad uint16, key []byte, keyPad uint16, payload []byte, payloadPad uint32,
		hname, hvalue string, hvaluePad uint16, nheaders uint8,
		hasPart bool, partition, partitions, maxMsg uint32, count uint16, withNil bool) {
		// A valid topic config: 1 to 1024 partitions, max_message_bytes 1 to
		// 4 MiB, 0 meaning the defaults.
		cfg := storage.TopicConfig{
			Partitions:      partitions % (storage.MaxPartitions + 1),
			MaxMessageBytes: maxMsg % (storage.MaxMessageBytesLimit + 1),
		}.WithDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("fuzz built a bad config %+v: %v", cfg, err)
		}
		topic := storage.Topic{Name: "fuzz", Config: cfg}

		id += strings.Repeat("i", int(idPad%300))
		key = append(key, make([]byte, keyPad%(10<<10))...)
		payload = append(payload, make([]byte, payloadPad%(5<<20))...)
		hvalue += strings.Repeat("v", int(hvaluePad%(20<<10)))
		m := &ferryv1.PublishMessage{Id: id, Key: key, Payload: payload}
		if nheaders > 0 {
			m.Headers = make(map[string]string, nheaders)
			for i := range int(nheaders) {
				m.Headers[hname+strconv.Itoa(i)] = hvalue
			}
		}
		if hasPart {
			m.Partition = &partition
		}
		n := int(count % 1100)
		msgs := make([]*ferryv1.PublishMessage, n)
		for i := range msgs {
			msgs[i] = m
		}
		if withNil && n > 0 {
			msgs[n-1] = nil
		}

		// The expected verdict, from the documented limits.
		headerBytes := 0
		for k, v := range m.Headers {
			headerBytes += len(k) + len(v)
		}
		size := len(id) + len(key) + len(payload) + headerBytes
		total := size * n
		if withNil && n > 0 {
			total -= size
		}
		type rule struct {
			broken bool
			words  []string // a rejection for this rule names one of these
		}
		rules := []rule{
			{n == 0, []string{"no messages"}},
			{n > 1000, []string{"1000"}},
			{withNil && n > 0, []string{"null"}},
			{len(id) > 128, []string{"id is"}},
			{len(key) > 4096, []string{"key is"}},
			{len(payload) > int(cfg.MaxMessageBytes), []string{"payload", "max_message_bytes"}},
			{len(m.Headers) > 64, []string{"headers"}},
			{headerBytes > 16384, []string{"headers"}},
			{hasPart && partition >= cfg.Partitions, []string{"partition"}},
			{total > 4<<20, []string{"batch is"}},
		}
		wantOK := true
		for _, r := range rules {
			if r.broken {
				wantOK = false
			}
		}

		err := validateBatch(topic, msgs)
		if wantOK {
			if err != nil {
				t.Fatalf("rejected a batch within the limits (%d messages of %d bytes, %d headers, config %+v): %v",
					n, size, len(m.Headers), cfg, err)
			}
			return
		}
		if err == nil {
			t.Fatalf("accepted a batch over the limits: %d messages, id %d, key %d, payload %d (max %d), %d headers of %d bytes, partition %v of %d, withNil %v, total %d",
				n, len(id), len(key), len(payload), cfg.MaxMessageBytes, len(m.Headers), headerBytes, m.Partition, cfg.Partitions, withNil, total)
		}
		var inv *invalidError
		if !errors.As(err, &inv) {
			t.Fatalf("rejection %v (%T) is not an invalidError, so not INVALID_ARGUMENT", err, err)
		}
		for _, r := range rules {
			if !r.broken {
				continue
			}
			for _, w := range r.words {
				if strings.Contains(err.Error(), w) {
					return
				}
			}
		}
		t.Fatalf("rejection %q names no rule the batch breaks", err)
	})
}
