package broker

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymq/ferry/consumer"
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
//   - header names of printable ASCII (! to ~), not starting with ferry-
//     in any case;
//   - an explicit partition below the topic's partition count;
//   - at most 4 MiB of ids, keys, headers and payloads in the batch.
//
// A rejection must be an invalidError that names a rule the batch breaks,
// in at most 1 KiB, however large the batch.
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
		{hname: "a\x01", hvalue: "v", nheaders: 1, count: 1},
		{hname: "a b", hvalue: "v", nheaders: 1, count: 1},
		{hname: "ferry-dead-letter-topic", hvalue: "v", nheaders: 1, count: 1},
		{hname: "FeRrY-", hvalue: "v", nheaders: 1, count: 1},
		{hname: "ferry", hvalue: "v", nheaders: 1, count: 1},
		{hname: "\xff", hvalue: "v", nheaders: 1, count: 1},
		{hname: "~!", hvalue: "v", nheaders: 1, count: 1},
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
			{len(m.Headers) > 0 && !printableASCII(hname), []string{"header name"}},
			{len(m.Headers) > 0 && len(hname) >= 6 && strings.EqualFold(hname[:6], "ferry-"), []string{"reserved"}},
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
		if n := len(err.Error()); n > maxStatusBytes {
			t.Fatalf("a rejection of %d bytes: %.200s", n, err)
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

// printableASCII: every byte ! to ~ (the header names index i is appended
// to keep that).
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// FuzzSubscriptionConfig builds a subscription config from fuzzed
// durations and checks that subConfigFromProto never panics and accepts
// it exactly when every documented range holds
// (proto/ferry/v1/subscription.proto): ack_timeout 1s to 12h, backoff_min
// 10ms to 12h, backoff_max backoff_min to 12h, dedup_horizon 0 or 1s to
// 100 years and only on EFFECTIVELY_ONCE; unset fields take their
// defaults. Nothing is clamped: what is accepted is what was asked for.
func FuzzSubscriptionConfig(f *testing.F) {
	f.Add(uint8(3), int64(30), int32(0), int64(1), int32(0), int64(60), int32(0), int64(0), int32(0), uint8(15))
	f.Add(uint8(3), int64(0), int32(1), int64(0), int32(1), int64(0), int32(1), int64(0), int32(0), uint8(15))
	f.Add(uint8(4), int64(3600), int32(0), int64(0), int32(10000000), int64(43200), int32(0), int64(3153600000), int32(0), uint8(15))
	f.Add(uint8(4), int64(3600), int32(0), int64(0), int32(9999999), int64(43201), int32(0), int64(3153600001), int32(0), uint8(15))
	f.Add(uint8(3), int64(9467280000), int32(0), int64(1), int32(0), int64(60), int32(0), int64(3600), int32(0), uint8(9))
	f.Add(uint8(2), int64(-1), int32(0), int64(1), int32(-5), int64(60), int32(0), int64(3600), int32(0), uint8(15))
	// One rule broken at a time: a backoff of 1ns; a dedup horizon on at-least-once.
	f.Add(uint8(2), int64(30), int32(0), int64(0), int32(1), int64(60), int32(0), int64(0), int32(0), uint8(15))
	f.Add(uint8(2), int64(30), int32(0), int64(1), int32(0), int64(60), int32(0), int64(3600), int32(0), uint8(15))
	f.Add(uint8(3), int64(30), int32(0), int64(1), int32(0), int64(60), int32(0), int64(9467280000), int32(0), uint8(8))
	f.Fuzz(func(t *testing.T, g uint8, ackS int64, ackN int32, bminS int64, bminN int32, bmaxS int64, bmaxN int32, hS int64, hN int32, set uint8) {
		guarantee := consumer.Guarantee(g%4 + 1)
		c := &ferryv1.SubscriptionConfig{Guarantee: ferryv1.DeliveryGuarantee(guarantee), Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED}
		fields := []struct {
			d   **durationpb.Duration
			s   int64
			n   int32
			def time.Duration
		}{
			{&c.AckTimeout, ackS, ackN, 30 * time.Second},
			{&c.BackoffMin, bminS, bminN, time.Second},
			{&c.BackoffMax, bmaxS, bmaxN, time.Minute},
			{&c.DedupHorizon, hS, hN, 0},
		}
		var want [4]time.Duration
		wantOK := true
		for i, fl := range fields {
			want[i] = fl.def
			if set&(1<<i) == 0 {
				continue
			}
			*fl.d = &durationpb.Duration{Seconds: fl.s, Nanos: fl.n}
			if (*fl.d).CheckValid() != nil || fl.s < 0 || fl.n < 0 || fl.s > 9223372035 {
				wantOK = false
				continue
			}
			want[i] = (*fl.d).AsDuration()
		}
		ack, bmin, bmax, horizon := want[0], want[1], want[2], want[3]
		year := 365 * 24 * time.Hour
		if ack < time.Second || ack > 12*time.Hour || bmin < 10*time.Millisecond || bmin > 12*time.Hour ||
			bmax < bmin || bmax > 12*time.Hour ||
			(horizon != 0 && (guarantee != consumer.EffectivelyOnce || horizon < time.Second || horizon > 100*year)) {
			wantOK = false
		}
		o, err := subConfigFromProto(c)
		if wantOK != (err == nil) {
			t.Fatalf("guarantee %v ack %v backoff %v to %v horizon %v (fields set %04b): accepted %v, want %v: %v",
				guarantee, ack, bmin, bmax, horizon, set&15, err == nil, wantOK, err)
		}
		if err != nil {
			if st := status.Convert(toStatus(err)); st.Code() != codes.InvalidArgument || len(st.Message()) > maxStatusBytes {
				t.Fatalf("refusal %v, want INVALID_ARGUMENT of at most %d bytes", st, maxStatusBytes)
			}
			return
		}
		if o.AckTimeout != ack || o.BackoffMin != bmin || o.BackoffMax != bmax || o.DedupHorizon != horizon {
			t.Fatalf("accepted %+v, asked for ack %v backoff %v to %v horizon %v", o, ack, bmin, bmax, horizon)
		}
	})
}

// FuzzRequestCodec: any bytes, decoded as any request by the server's
// codec, give a message or a marked one, never a panic or an error; a
// marked message is answered INVALID_ARGUMENT within maxStatusBytes, and
// a message that decodes is not taken for a marked one.
func FuzzRequestCodec(f *testing.F) {
	good, _ := proto.Marshal(&ferryv1.PublishRequest{Topic: "t", Messages: []*ferryv1.PublishMessage{{Id: "a", Headers: map[string]string{"h": "v"}}}})
	f.Add(good, uint8(0))
	f.Add([]byte("\x0a\x03a\xffb"), uint8(0))
	f.Add([]byte{0xff, 0xff, 0xff}, uint8(2))
	codec := newRequestCodec()
	f.Fuzz(func(t *testing.T, b []byte, which uint8) {
		msgs := []proto.Message{&ferryv1.PublishRequest{}, &ferryv1.CreateTopicRequest{}, &ferryv1.AckRequest{},
			&ferryv1.SubscribeRequest{}, &ferryv1.CreateSubscriptionRequest{}, &ferryv1.CommitRequest{}}
		m := msgs[int(which)%len(msgs)]
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, m); err != nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		msg, bad := undecodable(m)
		plain := proto.Clone(m)
		plain.ProtoReflect().SetUnknown(nil)
		if perr := proto.Unmarshal(b, proto.Clone(plain)); (perr != nil) != bad && !bytes.Contains(b, []byte{0xfa, 0xff, 0xff, 0xff, 0x0f}) {
			t.Fatalf("proto.Unmarshal: %v, marked %v (%q)", perr, bad, msg)
		}
		if bad {
			if st := status.Convert(undecodableStatus(msg)); st.Code() != codes.InvalidArgument || len(st.Message()) > maxStatusBytes {
				t.Fatalf("answer %v", st)
			}
		}
	})
}
