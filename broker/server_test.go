package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
	"github.com/ferrymq/ferry/storage"

	"github.com/ferrymq/ferry/internal/ferrytest"
)

// testServer is a broker serving on loopback and a client connected to it.
type testServer struct {
	srv    *Server
	dir    string
	conn   *grpc.ClientConn
	pub    ferryv1.PublisherServiceClient
	admin  ferryv1.AdminServiceClient
	served chan error // receives Serve's result
}

// startServer opens a broker in a fresh temp dir and connects to it.
func startServer(tb testing.TB, modify ...func(*Options)) *testServer {
	tb.Helper()
	return startServerIn(tb, tb.TempDir(), modify...)
}

// startServerIn opens a broker with its data in dir, serves it, and
// connects a client. Cleanup closes the client, then shuts the broker down
// and checks that Serve returned cleanly.
func startServerIn(tb testing.TB, dir string, modify ...func(*Options)) *testServer {
	tb.Helper()
	opts := DefaultOptions(dir)
	opts.GRPCAddr = "127.0.0.1:0"
	opts.HTTPAddr = "127.0.0.1:0"
	opts.Logger = slog.New(slog.NewTextHandler(ferrytest.Writer{TB: tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Small, but Badger refuses a memtable under ~6.7 MiB now that values
	// up to 1 MiB stay inline (its batch limit is 15% of a memtable).
	opts.Storage.MemTableBytes = storage.MinMemTableBytes
	opts.Storage.BlockCacheBytes = 4 << 20
	for _, m := range modify {
		m(&opts)
	}
	srv, err := Open(opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	ts := &testServer{srv: srv, dir: dir, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve() }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-ts.served:
			if err != nil {
				tb.Errorf("Serve: %v", err)
			}
		case <-ctx.Done():
			tb.Errorf("Serve did not return after Shutdown")
		}
	})
	if opts.TLS != nil {
		ts.conn = dialTLS(tb, srv.GRPCAddr().String(), testClientTLS(tb, opts.TLS))
	} else {
		ts.conn = dial(tb, srv.GRPCAddr().String())
	}
	ts.pub = ferryv1.NewPublisherServiceClient(ts.conn)
	ts.admin = ferryv1.NewAdminServiceClient(ts.conn)
	return ts
}

// dial connects to a gRPC server without TLS; Cleanup closes the connection.
func dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("grpc.NewClient(%s): %v", addr, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// shutdown shuts the broker down now and waits for Serve to return.
func (ts *testServer) shutdown(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		tb.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-ts.served:
		if err != nil {
			tb.Fatalf("Serve: %v", err)
		}
		ts.served <- nil // for Cleanup
	case <-ctx.Done():
		tb.Fatalf("Serve did not return after Shutdown")
	}
}

// testContext is a context that ends well before the test's own timeout.
func testContext(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// createTopic creates a topic and fails the test if it cannot.
func (ts *testServer) createTopic(tb testing.TB, name string, cfg *ferryv1.TopicConfig) *ferryv1.Topic {
	tb.Helper()
	var topic *ferryv1.Topic
	attempts := 0
	err := retryUnavailable(testContext(tb), func(ctx context.Context) error { // as createSub
		attempts++
		resp, err := ts.admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name, Config: cfg})
		if attempts > 1 && status.Code(err) == codes.AlreadyExists {
			var got *ferryv1.GetTopicResponse
			got, err = ts.admin.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: name})
			topic = got.GetTopic()
			return err
		}
		topic = resp.GetTopic()
		return err
	})
	if err != nil {
		tb.Fatalf("CreateTopic(%q): %v", name, err)
	}
	return topic
}

// heads returns the head offset of every partition of a topic.
func (ts *testServer) heads(tb testing.TB, topic string) []uint64 {
	tb.Helper()
	resp, err := ts.admin.GetTopic(testContext(tb), &ferryv1.GetTopicRequest{Name: topic})
	if err != nil {
		tb.Fatalf("GetTopic(%q): %v", topic, err)
	}
	var heads []uint64
	for _, p := range resp.GetPartitions() {
		heads = append(heads, p.GetHeadOffset())
	}
	return heads
}

// wantEmpty fails the test unless every partition of each topic is empty.
func (ts *testServer) wantEmpty(tb testing.TB, topics ...string) {
	tb.Helper()
	for _, topic := range topics {
		for part, h := range ts.heads(tb, topic) {
			if h != 0 {
				tb.Errorf("topic %q partition %d: head offset %d, want 0 (something was stored)", topic, part, h)
			}
		}
	}
}

// publish publishes msgs and fails the test if it cannot.
func (ts *testServer) publish(tb testing.TB, topic string, msgs ...*ferryv1.PublishMessage) []*ferryv1.PublishResult {
	tb.Helper()
	var resp *ferryv1.PublishResponse
	err := retryUnavailable(testContext(tb), func(ctx context.Context) (err error) {
		resp, err = ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: topic, Messages: msgs})
		return err
	})
	if err != nil {
		tb.Fatalf("Publish(%q, %d messages): %v", topic, len(msgs), err)
	}
	if len(resp.GetResults()) != len(msgs) {
		tb.Fatalf("Publish(%q): %d results for %d messages", topic, len(resp.GetResults()), len(msgs))
	}
	return resp.GetResults()
}

// retryUnavailable calls call until it returns anything but UNAVAILABLE,
// as the SDK does: in a cluster a leader can change between two calls (an
// election under load), and the write is retried with the same ids. It
// gives up when ctx ends.
func retryUnavailable(ctx context.Context, call func(ctx context.Context) error) error {
	for {
		err := call(ctx)
		if status.Code(err) != codes.Unavailable {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// read reads up to n messages of a partition from offset from.
func (ts *testServer) read(tb testing.TB, topic string, part uint32, from uint64, n uint32) *ferryv1.ReadMessagesResponse {
	tb.Helper()
	resp, err := ts.admin.ReadMessages(testContext(tb), &ferryv1.ReadMessagesRequest{
		Topic: topic, Partition: part, FromOffset: from, MaxMessages: n,
	})
	if err != nil {
		tb.Fatalf("ReadMessages(%q, %d, %d): %v", topic, part, from, err)
	}
	return resp
}

// wantStatus fails the test unless err is a gRPC status with code whose
// message contains every one of words.
func wantStatus(tb testing.TB, err error, code codes.Code, words ...string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("got no error, want %v", code)
	}
	st, ok := status.FromError(err)
	if !ok {
		tb.Fatalf("error %v is not a gRPC status", err)
	}
	wantCodeMessage(tb, st.Code(), st.Message(), code, words...)
}

func wantCodeMessage(tb testing.TB, got codes.Code, msg string, code codes.Code, words ...string) {
	tb.Helper()
	if got != code {
		tb.Errorf("code %v (%q), want %v", got, msg, code)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			tb.Errorf("message %q does not contain %q", msg, w)
		}
	}
}

func checkHealth(ctx context.Context, conn *grpc.ClientConn, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

func httpGet(tb testing.TB, url string) (int, string) {
	tb.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHealthServing(t *testing.T) {
	ts := startServer(t)
	ctx := testContext(t)
	for _, svc := range []string{"", "ferry.v1.PublisherService", "ferry.v1.AdminService"} {
		st, err := checkHealth(ctx, ts.conn, svc)
		if err != nil {
			t.Fatalf("health Check(%q): %v", svc, err)
		}
		if st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health Check(%q) = %v, want SERVING", svc, st)
		}
	}
	_, err := checkHealth(ctx, ts.conn, "no.such.Service")
	wantStatus(t, err, codes.NotFound)

	base := "http://" + ts.srv.HTTPAddr().String()
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, base+path); code != http.StatusOK {
			t.Errorf("GET %s = %d %q, want 200", path, code, body)
		}
	}
	if code, _ := httpGet(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestHealthAfterShutdown(t *testing.T) {
	ts := startServer(t)
	ctx := testContext(t)
	watch, err := healthpb.NewHealthClient(ts.conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health Watch: %v", err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Watch first = %v, %v; want SERVING", resp.GetStatus(), err)
	}

	start := time.Now()
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		_ = ts.srv.Shutdown(context.Background())
	}()
	// The watcher hears NOT_SERVING, or loses the connection.
	for {
		resp, err := watch.Recv()
		if err != nil {
			t.Logf("health Watch ended: %v", err)
			break
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
	}
	<-shutDown
	t.Logf("Shutdown took %v with a health watch open", time.Since(start))

	st, err := checkHealth(ctx, ts.conn, "")
	if err == nil && st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after Shutdown = %v, want NOT_SERVING or an error", st)
	}
	// A new connection cannot reach it either.
	conn := dial(t, ts.srv.GRPCAddr().String())
	st, err = checkHealth(ctx, conn, "")
	if err == nil && st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health on a new connection after Shutdown = %v, want NOT_SERVING or an error", st)
	}
	c := &http.Client{Timeout: 2 * time.Second}
	if resp, err := c.Get("http://" + ts.srv.HTTPAddr().String() + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("GET /readyz after Shutdown = 200")
		}
	}
	_, err = ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "t", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}})
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("Publish after Shutdown: %v, want UNAVAILABLE", err)
	}
}

func TestReflection(t *testing.T) {
	ts := startServer(t)
	ctx := testContext(t)
	stream, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	defer func() { _ = stream.CloseSend() }()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		t.Fatalf("Send ListServices: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv ListServices: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"ferry.v1.PublisherService", "ferry.v1.AdminService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	// grpcurl also needs the descriptors, not only the names.
	for _, sym := range []string{"ferry.v1.PublisherService", "ferry.v1.AdminService"} {
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: sym},
		}); err != nil {
			t.Fatalf("Send FileContainingSymbol: %v", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv FileContainingSymbol(%s): %v", sym, err)
		}
		if e := resp.GetErrorResponse(); e != nil {
			t.Errorf("FileContainingSymbol(%s): error %d %s", sym, e.GetErrorCode(), e.GetErrorMessage())
		} else if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
			t.Errorf("FileContainingSymbol(%s): no descriptors", sym)
		}
	}
}

// http2Frame encodes one HTTP/2 frame.
func http2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream&0x7fffffff)
	return append(b, payload...)
}

// hpackLiteral encodes headers as HPACK literals without indexing or
// Huffman coding (names and values under 127 bytes).
func hpackLiteral(kv ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, 0x00, byte(len(kv[i])))
		b = append(b, kv[i]...)
		b = append(b, byte(len(kv[i+1])))
		b = append(b, kv[i+1]...)
	}
	return b
}

const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func TestGarbageBytes(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "g", nil)
	const seed = 20260301 // fixed, so a failure replays
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	randFrames := func(n int) []byte {
		var b []byte
		for range n {
			typ := byte(rng.UintN(12))
			flags := byte(rng.UintN(256))
			stream := rng.Uint32N(8)
			b = append(b, http2Frame(typ, flags, stream, randBytes(rng.IntN(200)))...)
		}
		return b
	}
	settings := http2Frame(0x4, 0, 0, nil)
	publishHeaders := hpackLiteral(
		":method", "POST", ":scheme", "http", ":path", "/ferry.v1.PublisherService/Publish",
		":authority", "localhost", "content-type", "application/grpc", "te", "trailers",
	)
	var inputs [][]byte
	for range 3 {
		inputs = append(inputs, randBytes(4096))
		inputs = append(inputs, append([]byte(http2Preface), randBytes(4096)...))
		inputs = append(inputs, slices.Concat([]byte(http2Preface), settings, randFrames(40)))
		// A well-formed call whose gRPC message is garbage, claims a huge
		// length, or is cut short.
		lp := make([]byte, 5)
		lp[0] = byte(rng.UintN(2))
		binary.BigEndian.PutUint32(lp[1:], rng.Uint32())
		inputs = append(inputs, slices.Concat([]byte(http2Preface), settings,
			http2Frame(0x1, 0x4, 1, publishHeaders),                // HEADERS, END_HEADERS
			http2Frame(0x0, 0x1, 1, append(lp, randBytes(512)...)), // DATA, END_STREAM
			randFrames(10)))
		// HEADERS with a garbage header block.
		inputs = append(inputs, slices.Concat([]byte(http2Preface), settings,
			http2Frame(0x1, 0x5, 1, randBytes(300))))
	}
	for i, in := range inputs {
		c, err := net.DialTimeout("tcp", ts.srv.GRPCAddr().String(), 2*time.Second)
		if err != nil {
			t.Fatalf("input %d: dial: %v", i, err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write(in) // the server may hang up part way
		// Read until the server hangs up or goes quiet, so it has seen it all.
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}

	// Garbage protobuf in a well-formed gRPC call.
	for i := range 20 {
		var out []byte
		err := ts.conn.Invoke(testContext(t), "/ferry.v1.PublisherService/Publish", rawMessage(randBytes(rng.IntN(300))), &out, grpc.ForceCodec(rawCodec{}))
		if err == nil {
			t.Logf("garbage request %d was accepted", i)
		}
		if status.Code(err) == codes.Unknown {
			t.Errorf("garbage request %d: %v", i, err)
		}
	}

	ctx := testContext(t)
	st, err := checkHealth(ctx, ts.conn, "")
	if err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after garbage = %v, %v; want SERVING", st, err)
	}
	conn := dial(t, ts.srv.GRPCAddr().String())
	resp, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{
		Topic: "g", Messages: []*ferryv1.PublishMessage{{Id: "after-garbage", Payload: []byte("still here")}},
	})
	if err != nil {
		t.Fatalf("Publish after garbage: %v", err)
	}
	if r := resp.GetResults()[0]; r.GetOffset() != 0 || r.GetDuplicate() {
		t.Errorf("Publish after garbage = %v, want offset 0, not a duplicate", r)
	}
	got := ts.read(t, "g", 0, 0, 10).GetMessages()
	if len(got) != 1 || string(got[0].GetPayload()) != "still here" {
		t.Errorf("topic g holds %v, want only the message published after the garbage", got)
	}
}

func TestShutdownWithOpenStream(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir)
	created := ts.createTopic(t, "durable", &ferryv1.TopicConfig{Partitions: 2})
	ctx := testContext(t)
	stream, err := ts.pub.PublishStream(ctx)
	if err != nil {
		t.Fatalf("PublishStream: %v", err)
	}
	if err := stream.Send(&ferryv1.PublishStreamRequest{
		Sequence: 1, Topic: "durable",
		Messages: []*ferryv1.PublishMessage{{Id: "acked-1", Key: []byte("k"), Payload: []byte("before shutdown")}},
	}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetError() != nil || len(resp.GetResults()) != 1 {
		t.Fatalf("Recv = %v, %v; want one result", resp, err)
	}
	acked := resp.GetResults()[0]
	unary := ts.publish(t, "durable", &ferryv1.PublishMessage{Id: "acked-2", Payload: []byte("unary before shutdown")})[0]

	// The stream stays open: Shutdown must cut it off after ShutdownTimeout.
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	took := time.Since(start)
	t.Logf("Shutdown took %v with a publisher stream open", took)
	if took > 10*time.Second {
		t.Errorf("Shutdown took %v, want at most ~ShutdownTimeout (5s)", took)
	}
	select {
	case err := <-ts.served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.served <- nil
	case <-time.After(5 * time.Second):
		t.Fatalf("Serve did not return after Shutdown")
	}
	if _, err := stream.Recv(); err == nil {
		t.Errorf("stream Recv after Shutdown succeeded")
	}

	// A new broker on the same data dir has both acknowledged messages.
	ts2 := startServerIn(t, dir)
	for _, c := range []struct {
		res     *ferryv1.PublishResult
		id      string
		payload string
	}{{acked, "acked-1", "before shutdown"}, {unary, "acked-2", "unary before shutdown"}} {
		got := ts2.read(t, "durable", c.res.GetPartition(), c.res.GetOffset(), 1).GetMessages()
		if len(got) != 1 || got[0].GetId() != c.id || string(got[0].GetPayload()) != c.payload {
			t.Errorf("after reopen, partition %d offset %d = %v, want id %q payload %q",
				c.res.GetPartition(), c.res.GetOffset(), got, c.id, c.payload)
		}
	}
	// The topic came back with its config: an identical create is still a
	// no-op.
	if again := ts2.createTopic(t, "durable", &ferryv1.TopicConfig{Partitions: 2}); !proto.Equal(again, created) {
		t.Errorf("identical create after reopen = %v, want %v", again, created)
	}
	// A retry of an acknowledged message is still a duplicate.
	r := ts2.publish(t, "durable", &ferryv1.PublishMessage{Id: "acked-1", Key: []byte("k"), Payload: []byte("retry")})[0]
	if !r.GetDuplicate() || r.GetPartition() != acked.GetPartition() || r.GetOffset() != acked.GetOffset() {
		t.Errorf("retry after reopen = %v, want duplicate of %v", r, acked)
	}
}

func TestShutdownIdleIsQuick(t *testing.T) {
	ts := startServer(t)
	ts.createTopic(t, "t", nil)
	ts.publish(t, "t", &ferryv1.PublishMessage{Payload: []byte("x")})
	start := time.Now()
	ts.shutdown(t)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Shutdown with no open RPCs took %v", took)
	}
	// Shutdown is idempotent.
	if err := ts.srv.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// TestShutdownUnderLoad shuts the broker down while unary publishers are
// busy: every publish acknowledged is readable after a reopen, and every
// publish refused is refused as UNAVAILABLE (or cut off), never INTERNAL.
func TestShutdownUnderLoad(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir)
	ts.createTopic(t, "load", &ferryv1.TopicConfig{Partitions: 4})
	type acked struct {
		id  string
		res *ferryv1.PublishResult
	}
	const publishers = 8
	results := make(chan []acked, publishers)
	errs := make(chan error, publishers)
	ctx := testContext(t)
	for w := range publishers {
		go func() {
			var mine []acked
			defer func() { results <- mine }()
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				resp, err := ts.pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "load", Messages: []*ferryv1.PublishMessage{
					{Id: id, Payload: []byte(id)},
				}})
				if err != nil {
					errs <- err
					return
				}
				mine = append(mine, acked{id, resp.GetResults()[0]})
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ts.shutdown(t)
	var all []acked
	for range publishers {
		all = append(all, <-results...)
	}
	for range publishers {
		err := <-errs
		if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled {
			t.Errorf("publish during shutdown failed with %v, want UNAVAILABLE", err)
		}
	}
	if len(all) == 0 {
		t.Fatalf("no publish was acknowledged before shutdown")
	}
	t.Logf("%d publishes acknowledged before shutdown", len(all))

	ts2 := startServerIn(t, dir)
	for _, a := range all {
		got := ts2.read(t, "load", a.res.GetPartition(), a.res.GetOffset(), 1).GetMessages()
		if len(got) != 1 || got[0].GetId() != a.id {
			t.Fatalf("acknowledged %s at partition %d offset %d, after reopen it reads %v",
				a.id, a.res.GetPartition(), a.res.GetOffset(), got)
		}
	}
}

// TestServeReturnsWhenGRPCFails breaks the gRPC listener under a running
// broker: Serve should return the error (cmd/ferry's serve relies on it to
// stop the rest), not wait for a Shutdown nobody will call.
func TestServeReturnsWhenGRPCFails(t *testing.T) {
	ts := startServer(t)
	_ = ts.srv.grpcLis.Close()
	select {
	case err := <-ts.served:
		if err == nil {
			t.Errorf("Serve returned nil after its gRPC listener failed")
		}
		ts.served <- nil // for Cleanup
	case <-time.After(5 * time.Second):
		t.Errorf("Serve did not return within 5s of its gRPC listener failing")
	}
}

// rawMessage is a request body sent as is.
type rawMessage []byte

// rawCodec sends rawMessage bytes unchanged under the "proto" name, so the
// server decodes them as a protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(rawMessage)
	if !ok {
		return nil, errors.New("rawCodec: want rawMessage")
	}
	return m, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return errors.New("rawCodec: want *[]byte")
	}
	*p = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestPprofOnlyWhenAsked: the HTTP port serves no profile unless Pprof is
// set (--pprof) — the command line, every goroutine's stack and a CPU
// profile on demand are not for whoever reaches the port — and serves
// them when it is; health and metrics answer either way.
func TestPprofOnlyWhenAsked(t *testing.T) {
	paths := []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=2", "/debug/pprof/symbol"}
	for _, on := range []bool{false, true} {
		ts := startServer(t, func(o *Options) { o.Pprof = on })
		base := "http://" + ts.srv.HTTPAddr().String()
		for _, p := range paths {
			code, _ := httpGet(t, base+p)
			if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; code != want {
				t.Errorf("pprof %v: GET %s answered %d, want %d", on, p, code, want)
			}
		}
		for _, p := range []string{"/healthz", "/metrics"} {
			if code, _ := httpGet(t, base+p); code != http.StatusOK {
				t.Errorf("pprof %v: GET %s answered %d", on, p, code)
			}
		}
	}
}

// TestHTTPGuardedPaths: with auth on, the profiles (--pprof) answer only a
// bearer token granted admin on every topic, and /metrics with
// MetricsAuth only one granted the cluster permission: 401 without a
// token or with an unknown one, 403 for a principal the policy does not
// grant it; health stays open, and without MetricsAuth /metrics too.
func TestHTTPGuardedPaths(t *testing.T) {
	get := func(url, tok string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, metricsAuth := range []bool{true, false} {
		ts := startServer(t, withAuth(t, t.TempDir(), nil), func(o *Options) { o.Pprof, o.MetricsAuth = true, metricsAuth })
		base := "http://" + ts.srv.HTTPAddr().String()
		guardedMetrics := map[bool]int{true: http.StatusUnauthorized, false: http.StatusOK}[metricsAuth]
		deniedMetrics := map[bool]int{true: http.StatusForbidden, false: http.StatusOK}[metricsAuth]
		for _, c := range []struct {
			path, tok string
			want      int
		}{
			{"/healthz", "", http.StatusOK},
			{"/debug/pprof/", "", http.StatusUnauthorized},
			{"/debug/pprof/cmdline", "wrong-token", http.StatusUnauthorized},
			{"/debug/pprof/cmdline", testTokens["kitchen"], http.StatusForbidden},
			{"/debug/pprof/cmdline", testTokens["admin"], http.StatusOK},
			{"/metrics", "", guardedMetrics},
			{"/metrics", testTokens["nobody"], deniedMetrics},
			{"/metrics", testTokens["admin"], http.StatusOK},
		} {
			if got := get(base+c.path, c.tok); got != c.want {
				t.Errorf("metrics auth %v: GET %s with token %q answered %d, want %d", metricsAuth, c.path, c.tok, got, c.want)
			}
		}
	}
	if _, err := Open(func() Options { o := DefaultOptions(t.TempDir()); o.MetricsAuth = true; return o }()); err == nil {
		t.Error("MetricsAuth without Auth opened")
	}
}
