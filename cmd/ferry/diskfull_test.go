package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// Disk-full test sizes: a filesystem of diskFS with a reserve of diskReserve
// (above the minimum of four 16 MiB memtables and two 64 MiB value-log
// files), so about 250 MiB of messages fill it.
const (
	diskFS      = 512 << 20
	diskReserve = "256MiB"
)

// TestDiskFullRefusesPublishesAndRecovers fills a real filesystem mounted
// for the test: publishes are refused with RESOURCE_EXHAUSTED before it
// is full, the broker keeps serving reads and acks, starts again after
// kill -9 — on the disk left as it was, then filled to the last byte by
// another file (read-only) — restarts itself read-write once that file
// is gone, and takes publishes again once a topic is deleted. Every
// acknowledged message of the kept topic is read back at the end.
//
// It runs on ext4 (a loop device) and on tmpfs, whose mapped files behave
// apart: a read of a hole in a mapped tmpfs file takes a page too. It takes
// 10–40 s: each filesystem is filled for real with ~250 MiB of messages.
// The messages of both topics share value-log files, so deleting one gives
// space back through value-log GC of files partly garbage.
func TestDiskFullRefusesPublishesAndRecovers(t *testing.T) {
	t.Run("ext4", func(t *testing.T) { diskFullScenario(t, mountExt4(t, diskFS)) })
	t.Run("tmpfs", func(t *testing.T) { diskFullScenario(t, mountTmpfs(t, diskFS)) })
}

func diskFullScenario(t *testing.T, mnt string) {
	data := filepath.Join(mnt, "data")
	p := startDiskFerry(t, data)
	conn := dialAddr(t, p.addr(t))
	ctx := context.Background()
	admin := ferryv1.NewAdminServiceClient(conn)
	for _, topic := range []string{"keep", "fill"} {
		if _, err := admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: topic, Config: &ferryv1.TopicConfig{Partitions: 2}}); err != nil {
			t.Fatal(err)
		}
	}
	sub := ferryv1.NewSubscriberServiceClient(conn)
	if _, err := admin.CreateSubscription(ctx, &ferryv1.CreateSubscriptionRequest{Topic: "keep", Name: "readers",
		Config: &ferryv1.SubscriptionConfig{Guarantee: ferryv1.DeliveryGuarantee_DELIVERY_GUARANTEE_AT_LEAST_ONCE, Type: ferryv1.SubscriptionType_SUBSCRIPTION_TYPE_SHARED}}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	acks := fillUntilRefused(t, conn)
	t.Logf("refused after %d acked messages in %v; %s", len(acks), time.Since(start).Round(time.Millisecond), diskUse(t, mnt))
	p.checkAlive(t)
	st := storageStatus(t, admin)
	// Refused once free space fell below the reserve, and held so until
	// it is back 1/16 above it (Badger's compactions may give a little
	// back meanwhile).
	if !st.PublishingRefused || st.DiskFreeBytes >= st.DiskReserveBytes+st.DiskReserveBytes/16 {
		t.Fatalf("after refusals GetTopic says %+v", st)
	}
	if code, body := httpGetBody(t, "http://"+p.httpAddr+"/readyz"); code != 200 || !strings.Contains(body, "publishing refused") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	if _, body := httpGetBody(t, "http://"+p.httpAddr+"/metrics"); !strings.Contains(body, "ferry_storage_publishing_refused 1") {
		t.Fatal("/metrics does not say publishing is refused")
	}
	out := runCLI(t, "topic", "get", "keep", "--server", p.addr(t))
	if !strings.Contains(out, "broker storage: publishing refused") {
		t.Fatalf("ferry topic get says:\n%s", out)
	}
	if out := runCLI(t, "topic", "get", "keep", "-o", "json", "--server", p.addr(t)); !strings.Contains(out, `"publishing_refused":true`) {
		t.Fatalf("ferry topic get -o json says:\n%s", out)
	}
	// Reads and acks go on inside the reserve.
	ackSome(t, sub, 50)
	readBack(t, admin, acks, 200)

	// kill -9, then fill the disk to the last byte with another file: the
	// broker must start (read-only), serve reads and refuse writes.
	p.kill(t)
	filler := fillDisk(t, mnt)
	t.Logf("filled: %s", diskUse(t, mnt))
	p = startDiskFerry(t, data)
	conn = dialAddr(t, p.addr(t))
	admin = ferryv1.NewAdminServiceClient(conn)
	if st := storageStatus(t, admin); !st.ReadOnly || !strings.Contains(st.Detail, "opened read-only") {
		t.Fatalf("started on a full disk, GetTopic says %+v", st)
	}
	readBack(t, admin, acks, 200)
	_, err := ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: "keep", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}})
	checkRefused(t, err)

	// Some space back, a quarter of the reserve short of it: the broker
	// restarts itself in place, read-write, and still refuses publishes.
	shrinkToFree(t, filler, mnt, 192<<20)
	p.nextServing(t, 60*time.Second)
	conn = dialAddr(t, p.addr(t))
	admin = ferryv1.NewAdminServiceClient(conn)
	if st := storageStatus(t, admin); st.ReadOnly || !st.PublishingRefused {
		t.Fatalf("after the restart in place GetTopic says %+v", st)
	}
	_, err = ferryv1.NewPublisherServiceClient(conn).Publish(ctx, &ferryv1.PublishRequest{Topic: "keep", Messages: []*ferryv1.PublishMessage{{Payload: []byte("x")}}})
	checkRefused(t, err)
	ackSome(t, ferryv1.NewSubscriberServiceClient(conn), 50)
	t.Logf("read-write again, publishing refused; %s", diskUse(t, mnt))
	// Deleting a topic frees its space at once; publishing resumes.
	if _, err := admin.DeleteTopic(ctx, &ferryv1.DeleteTopicRequest{Name: "fill", Force: true}); err != nil {
		t.Fatal(err)
	}
	pub := ferryv1.NewPublisherServiceClient(conn)
	rng := rand.New(rand.NewPCG(7, 7))
	deadline := time.Now().Add(60 * time.Second)
	for n := 0; n < 20; {
		msgs := []*ferryv1.PublishMessage{diskMessage(rng, fmt.Sprintf("after-%d", n))}
		resp, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "keep", Messages: msgs})
		if err == nil {
			acks = append(acks, diskAck{msg: msgs[0], partition: resp.Results[0].Partition, offset: resp.Results[0].Offset})
			n++
			continue
		}
		checkRefused(t, err)
		if time.Now().After(deadline) {
			t.Fatalf("publishing did not resume within 60s of deleting a topic: %v; %s", err, diskUse(t, mnt))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("publishing resumed; %s", diskUse(t, mnt))
	readBack(t, admin, acks, len(acks))
	p.checkAlive(t)
	p.checkNoCrash(t)
}

// diskAck is an acknowledged message of topic keep.
type diskAck struct {
	msg       *ferryv1.PublishMessage
	partition uint32
	offset    uint64
}

// fillUntilRefused publishes 16 KiB messages to keep and fill from four
// publishers until each is refused, and returns keep's acks. Any answer
// but OK or RESOURCE_EXHAUSTED fails the test.
func fillUntilRefused(t *testing.T, conn *grpc.ClientConn) []diskAck {
	t.Helper()
	pub := ferryv1.NewPublisherServiceClient(conn)
	var (
		mu   sync.Mutex
		acks []diskAck
		wg   sync.WaitGroup
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(1, uint64(w)))
			topic := []string{"keep", "fill"}[w%2]
			for i := 0; ; i++ {
				msgs := make([]*ferryv1.PublishMessage, 4)
				for j := range msgs {
					msgs[j] = diskMessage(rng, fmt.Sprintf("w%d-%d-%d", w, i, j))
				}
				resp, err := pub.Publish(context.Background(), &ferryv1.PublishRequest{Topic: topic, Messages: msgs})
				if err != nil {
					checkRefused(t, err)
					return
				}
				if topic == "keep" {
					mu.Lock()
					for j, r := range resp.Results {
						acks = append(acks, diskAck{msg: msgs[j], partition: r.Partition, offset: r.Offset})
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return acks
}

// checkRefused fails unless err is RESOURCE_EXHAUSTED naming free space
// and the reserve, with a RetryInfo delay.
func checkRefused(t *testing.T, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "free") || !strings.Contains(st.Message(), "reserve") {
		t.Fatalf("publish refused with %v, want RESOURCE_EXHAUSTED naming free space and the reserve", err)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return
		}
	}
	t.Fatalf("refusal %v has no RetryInfo", err)
}

func diskMessage(rng *rand.Rand, name string) *ferryv1.PublishMessage {
	payload := make([]byte, 16<<10)
	for i := range payload {
		payload[i] = byte(rng.Uint32()) // incompressible: the table takes what the log took
	}
	return &ferryv1.PublishMessage{Id: name, Payload: payload}
}

// ackSome receives n deliveries of keep/readers and acks them with the
// unary Ack.
func ackSome(t *testing.T, sub ferryv1.SubscriberServiceClient, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := sub.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&ferryv1.SubscribeRequest{Frame: &ferryv1.SubscribeRequest_Init{Init: &ferryv1.SubscribeInit{
		Topic: "keep", Subscription: "readers", Credit: int32(n)}}}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for len(ids) < n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("receive deliveries on a disk below its reserve: %v", err)
		}
		for _, d := range resp.GetDeliveries().GetDeliveries() {
			ids = append(ids, d.GetDeliveryId())
		}
	}
	resp, err := sub.Ack(ctx, &ferryv1.AckRequest{Topic: "keep", Subscription: "readers", DeliveryIds: ids})
	if err != nil {
		t.Fatalf("ack on a disk below its reserve: %v", err)
	}
	for _, r := range resp.GetResults() {
		if r.GetCode() != 0 {
			t.Fatalf("ack of %s refused: %v", r.GetDeliveryId(), r)
		}
	}
}

// readBack reads the first n acks (all if n covers them) back and checks
// each holds what was acknowledged.
func readBack(t *testing.T, admin ferryv1.AdminServiceClient, acks []diskAck, n int) {
	t.Helper()
	for _, a := range acks[:min(n, len(acks))] {
		resp, err := admin.ReadMessages(context.Background(), &ferryv1.ReadMessagesRequest{Topic: "keep", Partition: a.partition, FromOffset: a.offset, MaxMessages: 1})
		if err != nil {
			t.Fatalf("read partition %d offset %d: %v", a.partition, a.offset, err)
		}
		if len(resp.Messages) != 1 || resp.Messages[0].Id != a.msg.Id || !bytes.Equal(resp.Messages[0].Payload, a.msg.Payload) {
			t.Fatalf("acknowledged %q at partition %d offset %d is lost", a.msg.Id, a.partition, a.offset)
		}
	}
}

func storageStatus(t *testing.T, admin ferryv1.AdminServiceClient) *ferryv1.StorageStatus {
	t.Helper()
	resp, err := admin.GetTopic(context.Background(), &ferryv1.GetTopicRequest{Name: "keep"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStorage()
}

// mountExt4 makes an ext4 filesystem of size bytes in a file (no blocks
// reserved for root: the broker runs as root here) and mounts it on a loop
// device for the test. Without root, or if the mount fails, the test is
// skipped — or fails with FERRY_REQUIRE_MOUNT=1 (CI).
func mountExt4(t *testing.T, size int64) string {
	t.Helper()
	skip := mountSkip(t)
	tmp := t.TempDir()
	img := filepath.Join(tmp, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Truncate(size), f.Close()); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		skip("mkfs.ext4: %v: %s (FERRY_REQUIRE_MOUNT=1 makes this a failure)", err, out)
	}
	return mountFor(t, tmp, "mount ext4 on a loop device", "-o", "loop", img)
}

// mountTmpfs mounts a tmpfs of size bytes for the test, skipped or failed
// as mountExt4.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	mountSkip(t)
	return mountFor(t, t.TempDir(), "mount tmpfs", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs")
}

// mountSkip is how a test that cannot mount ends: skipped, or failed with
// FERRY_REQUIRE_MOUNT=1. Without root it ends at once.
func mountSkip(t *testing.T) func(format string, args ...any) {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("FERRY_REQUIRE_MOUNT") == "1" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("mounting a small filesystem needs root (FERRY_REQUIRE_MOUNT=1 makes this a failure)")
	}
	return skip
}

// mountFor runs mount with args onto a new directory mnt in tmp, unmounted
// when the test ends, and returns it.
func mountFor(t *testing.T, tmp, what string, args ...string) string {
	t.Helper()
	dir := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", append(args, dir)...).CombinedOutput(); err != nil {
		mountSkip(t)("%s: %v: %s (FERRY_REQUIRE_MOUNT=1 makes this a failure)", what, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the filesystem is full and returns
// its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{1}, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for size := len(chunk) / 2; size >= 512; size /= 2 {
		for {
			if _, err := f.Write(chunk[:size]); err != nil {
				break
			}
		}
	}
	return path
}

// shrinkToFree truncates filler so that the filesystem of dir has about
// free bytes free.
func shrinkToFree(t *testing.T, filler, dir string, free uint64) {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	have := fs.Bavail * uint64(fs.Bsize)
	fi, err := os.Stat(filler)
	if err != nil {
		t.Fatal(err)
	}
	if free <= have || int64(free-have) > fi.Size() {
		t.Fatalf("cannot free %d bytes with a filler of %d and %d free", free, fi.Size(), have)
	}
	if err := os.Truncate(filler, fi.Size()-int64(free-have)); err != nil {
		t.Fatal(err)
	}
}

func diskUse(t *testing.T, dir string) string {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%.1f MiB free of %.1f MiB", float64(fs.Bavail*uint64(fs.Bsize))/(1<<20), float64(fs.Blocks*uint64(fs.Bsize))/(1<<20))
}

func dialAddr(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func httpGetBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runCLI runs the ferry binary with args and returns its output.
func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(buildFerry(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ferry %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// diskProcess is a `ferry serve` that may restart itself in place: each
// "ferry serving" line gives its new addresses.
type diskProcess struct {
	cmd      *exec.Cmd
	serving  chan [2]string // grpc and http address of each start
	grpcAddr string
	httpAddr string
	exited   chan struct{}
	exitErr  error

	outMu sync.Mutex
	out   []string // stderr lines that are not JSON logs: a Go crash
}

func startDiskFerry(t *testing.T, data string) *diskProcess {
	t.Helper()
	cmd := exec.Command(buildFerry(t), "serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--log-format", "json", "--disk-reserve", diskReserve)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &diskProcess{cmd: cmd, serving: make(chan [2]string, 8), exited: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Level    string `json:"level"`
				Msg      string `json:"msg"`
				GRPCAddr string `json:"grpc_addr"`
				HTTPAddr string `json:"http_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				p.outMu.Lock()
				p.out = append(p.out, sc.Text())
				p.outMu.Unlock()
				t.Logf("ferry: %s", sc.Bytes())
				continue
			}
			if line.Msg == "ferry serving" {
				p.serving <- [2]string{line.GRPCAddr, line.HTTPAddr}
			}
			if line.Level != "DEBUG" {
				t.Logf("ferry: %s", sc.Bytes())
			}
		}
	}()
	go func() {
		<-scanned
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	p.nextServing(t, 60*time.Second)
	t.Cleanup(func() { p.kill(t) })
	return p
}

// nextServing waits for the next "ferry serving" line.
func (p *diskProcess) nextServing(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case a := <-p.serving:
		p.grpcAddr, p.httpAddr = a[0], a[1]
	case <-p.exited:
		t.Fatalf("ferry serve exited before serving: %v\n%s", p.exitErr, p.crash())
	case <-time.After(limit):
		t.Fatalf("ferry serve did not serve within %v", limit)
	}
}

func (p *diskProcess) addr(t *testing.T) string { return p.grpcAddr }

func (p *diskProcess) kill(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *diskProcess) crash() string {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	return strings.Join(p.out[:min(len(p.out), 40)], "\n")
}

// checkAlive fails if the broker exited.
func (p *diskProcess) checkAlive(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("ferry serve died: %v\n%s", p.exitErr, p.crash())
	default:
	}
}

// checkNoCrash fails if the broker printed anything but JSON logs (a Go
// crash: fatal error, SIGBUS, panic).
func (p *diskProcess) checkNoCrash(t *testing.T) {
	t.Helper()
	if out := p.crash(); out != "" {
		t.Fatalf("ferry serve printed outside its logs:\n%s", out)
	}
}
