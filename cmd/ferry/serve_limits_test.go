package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

// TestLimitFlags: the --limit-* flags are off by default and read from
// the --config file like every flag; a byte rate takes a size.
func TestLimitFlags(t *testing.T) {
	got := printedConfig(t)
	for k, want := range map[string]string{"limit-publish-msgs": "0", "limit-publish-bytes": "0", "limit-streams": "0",
		"limit-subscriptions": "0", "limit-burst": "1s", "limit-principals": "10000", "limit-connections": "0", "limit-topic-bytes": "0"} {
		if got[k] != want {
			t.Errorf("default %s = %q, want %q", k, got[k], want)
		}
	}
	file := filepath.Join(t.TempDir(), "ferry.yaml")
	yaml := "limit-publish-msgs: 5000\nlimit-publish-bytes: 10MiB\nlimit-streams: 8\nlimit-subscriptions: 20\nlimit-burst: 2s\nlimit-connections: 3\nlimit-topic-bytes: 10GiB\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	got = printedConfig(t, "--config", file, "--limit-streams", "4")
	for k, want := range map[string]string{"limit-publish-msgs": "5000", "limit-publish-bytes": "10485760", "limit-streams": "4",
		"limit-subscriptions": "20", "limit-burst": "2s", "limit-connections": "3", "limit-topic-bytes": "10737418240"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
}

// TestServeLimitsProcess: a real `ferry serve` with --limit-publish-msgs
// refuses a principal over it with RESOURCE_EXHAUSTED and a RetryInfo, and
// refuses to start with a negative limit.
func TestServeLimitsProcess(t *testing.T) {
	p := startFerry(t, t.TempDir(), "--limit-publish-msgs", "10")
	conn := p.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := ferryv1.NewAdminServiceClient(conn).CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	pub := ferryv1.NewPublisherServiceClient(conn)
	publish := func(prefix string) error {
		msgs := make([]*ferryv1.PublishMessage, 10)
		for i := range msgs {
			msgs[i] = &ferryv1.PublishMessage{Id: fmt.Sprintf("%s%d", prefix, i)}
		}
		_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: "t", Messages: msgs})
		return err
	}
	if err := publish("a"); err != nil {
		t.Fatal(err)
	}
	st := status.Convert(publish("b"))
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--limit-publish-msgs") {
		t.Fatalf("over the limit: %v, want RESOURCE_EXHAUSTED naming --limit-publish-msgs", st.Err())
	}
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	if retry <= 0 || retry > time.Second {
		t.Fatalf("RetryInfo %v, want within (0, 1s]", retry)
	}

	out, err := exec.Command(buildFerry(t), "serve", "--data-dir", t.TempDir(), "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--limit-streams", "-1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Streams -1 is negative") {
		t.Fatalf("serve --limit-streams -1: %v\n%s", err, out)
	}
}

// TestServeConnectionAndTopicLimitsProcess: a real `ferry serve` with
// --limit-connections 1 refuses a call on a principal's second connection
// until its first closes, and with --limit-topic-bytes refuses a publish
// to a full topic while another topic takes them; negative values are
// refused at start.
func TestServeConnectionAndTopicLimitsProcess(t *testing.T) {
	p := startFerry(t, t.TempDir(), "--limit-connections", "1", "--limit-topic-bytes", "2KB")
	first := p.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := ferryv1.NewAdminServiceClient(first)
	for _, name := range []string{"full", "other"} {
		if _, err := admin.CreateTopic(ctx, &ferryv1.CreateTopicRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	second := ferryv1.NewAdminServiceClient(p.dial(t))
	_, err := second.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "full"})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--limit-connections") {
		t.Fatalf("a second connection: %v, want RESOURCE_EXHAUSTED naming --limit-connections", err)
	}

	pub := ferryv1.NewPublisherServiceClient(first)
	publish := func(topic, id string) error {
		_, err := pub.Publish(ctx, &ferryv1.PublishRequest{Topic: topic, Messages: []*ferryv1.PublishMessage{{Id: id, Payload: make([]byte, 1000)}}})
		return err
	}
	for i := range 2 {
		if err := publish("full", fmt.Sprint(i)); err != nil {
			t.Fatalf("publish %d of 2 KB into a 2 KB quota: %v", i, err)
		}
	}
	err = publish("full", "2")
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--limit-topic-bytes") {
		t.Fatalf("into the full topic: %v, want RESOURCE_EXHAUSTED naming --limit-topic-bytes", err)
	}
	if err := publish("other", "0"); err != nil {
		t.Fatalf("another topic: %v", err)
	}

	first.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := second.GetTopic(ctx, &ferryv1.GetTopicRequest{Name: "full"})
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("after the first connection closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, bad := range [][]string{{"--limit-connections", "-1"}, {"--limit-topic-bytes", "-1"}} {
		args := append([]string{"serve", "--data-dir", t.TempDir(), "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, bad...)
		out, err := exec.Command(buildFerry(t), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "negative") {
			t.Fatalf("serve %v: %v\n%s", bad, err, out)
		}
		t.Logf("serve %v: %s", bad, strings.TrimSpace(string(out)))
	}
}
