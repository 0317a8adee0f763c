// Throwaway measurement (not committed): a quiet principal's publish
// latency alone and while a noisy one hammers, against a real ferry serve.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrymq/ferry/proto/ferry/v1"
)

func dialFrom(addr, local string) ferryv1.PublisherServiceClient {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		panic(err)
	}
	return ferryv1.NewPublisherServiceClient(conn)
}

func batch(prefix string, n, size int) []*ferryv1.PublishMessage {
	m := make([]*ferryv1.PublishMessage, n)
	for i := range m {
		m[i] = &ferryv1.PublishMessage{Id: fmt.Sprintf("%s-%d", prefix, i), Payload: make([]byte, size)}
	}
	return m
}

func quiet(pub ferryv1.PublisherServiceClient, d time.Duration, tag string) {
	var lat []time.Duration
	end := time.Now().Add(d)
	n := 0
	tick := time.NewTicker(10 * time.Millisecond) // 10 msgs per 10ms: 1000 msgs/s
	defer tick.Stop()
	for time.Now().Before(end) {
		<-tick.C
		s := time.Now()
		_, err := pub.Publish(context.Background(), &ferryv1.PublishRequest{Topic: "t", Messages: batch(fmt.Sprintf("%s-%d", tag, n), 10, 1024)})
		if err != nil {
			fmt.Println("quiet error:", err)
			continue
		}
		lat = append(lat, time.Since(s))
		n++
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("%s: quiet %d msgs in %v (%.0f msgs/s), latency p50 %v p99 %v\n", tag, n*10, d, float64(n*10)/d.Seconds(),
		lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:7500", "")
	polite := flag.Bool("polite", false, "the noisy client waits the RetryInfo delay, as the SDK does")
	flag.Parse()
	_ = os.Args
	pq := dialFrom(*addr, "127.0.0.1")
	pn := dialFrom(*addr, "127.0.0.2")
	quiet(pq, 5*time.Second, "alone")
	var stored, refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := pn.Publish(context.Background(), &ferryv1.PublishRequest{Topic: "t", Messages: batch(fmt.Sprintf("n%d-%d", w, i), 100, 1024)})
				switch status.Code(err) {
				case codes.OK:
					stored.Add(100)
				case codes.ResourceExhausted:
					refused.Add(1)
					if *polite {
						for _, d := range status.Convert(err).Details() {
							if ri, ok := d.(*errdetails.RetryInfo); ok {
								time.Sleep(ri.GetRetryDelay().AsDuration())
							}
						}
					}
				}
			}
		}()
	}
	quiet(pq, 5*time.Second, "noisy")
	close(stop)
	wg.Wait()
	fmt.Printf("noisy: %d msgs stored in 5s (%.0f msgs/s), %d batches refused\n", stored.Load(), float64(stored.Load())/5, refused.Load())
}
