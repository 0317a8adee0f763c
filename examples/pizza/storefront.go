package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"

	"github.com/ferrymq/ferry/client"
)

//go:embed page.html
var page []byte

// runStorefront serves the web page and the order API, publishes orders,
// and feeds the live board from NONE subscriptions.
//
// An order's id is chosen by whoever places it (the page does so before
// the first POST) and is the message's id and key: a double click or a
// retried POST publishes the same id again and the broker stores it once.
// Each POST answered with success is appended to accepted.log first, so the
// checker can tell an accepted order that never reached the topic.
func runStorefront(args []string) error {
	fs := flag.NewFlagSet("storefront", flag.ExitOnError)
	var sf serviceFlags
	sf.register(fs, "storefront")
	httpAddr := fs.String("http-addr", ":8080", "HTTP listen address of the page and the API")
	controlURL := fs.String("control-url", "", "the supervisor's control server, for stats and chaos (empty: none)")
	_ = fs.Parse(args)
	ctx, stop, lg, err := sf.start("storefront")
	if err != nil {
		return err
	}
	defer stop()

	accepted, err := openLineLog(filepath.Join(sf.dir, acceptedLog))
	if err != nil {
		return err
	}
	defer accepted.Close()
	c, err := connect(ctx, sf, lg)
	if err != nil {
		return err
	}
	defer c.Close()
	p := c.NewProducer(topicOrders, client.ProducerOptions{})
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Close(cctx)
	}()

	s := &storefront{lg: lg, producer: p, accepted: accepted, board: newBoard(),
		control: strings.TrimSuffix(*controlURL, "/"), http: &http.Client{Timeout: 5 * time.Second}}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(ctx, *httpAddr, s.routes()) })
	g.Go(func() error { return s.board.follow(ctx, c) })
	lg.Info("storefront open", "http_addr", *httpAddr)
	return g.Wait()
}

// storefront holds the HTTP handlers' dependencies.
type storefront struct {
	lg       *slog.Logger
	producer *client.Producer
	accepted *lineLog
	board    *board
	control  string // the supervisor's control URL, or ""
	http     *http.Client
}

func (s *storefront) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.HandleFunc("GET /api/menu", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, menu) })
	mux.HandleFunc("GET /api/services", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, services) })
	mux.HandleFunc("POST /api/orders", s.placeOrder)
	mux.HandleFunc("GET /api/board/events", s.board.serveEvents)
	mux.HandleFunc("GET /api/stats", s.proxy(http.MethodGet, "/stats"))
	mux.HandleFunc("POST /api/chaos", s.proxy(http.MethodPost, "/chaos"))
	return mux
}

// orderRequest is the body of POST /api/orders.
type orderRequest struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Pizza    string `json:"pizza"`
}

// orderResponse answers POST /api/orders.
type orderResponse struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate"` // the id was placed before: nothing new was stored
	Partition uint32 `json:"partition"`
	Offset    uint64 `json:"offset"`
}

// maxCustomerLen bounds a customer's name, in characters.
const maxCustomerLen = 40

func (s *storefront) placeOrder(w http.ResponseWriter, r *http.Request) {
	var req orderRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "the body must be JSON: {\"id\", \"customer\", \"pizza\"}")
		return
	}
	req.Customer = strings.TrimSpace(req.Customer)
	item, onMenu := menuItem(req.Pizza)
	switch {
	case !orderIDPattern.MatchString(req.ID):
		writeError(w, http.StatusBadRequest, "id must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
		return
	case req.Customer == "" || utf8.RuneCountInString(req.Customer) > maxCustomerLen:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("customer must be 1 to %d characters", maxCustomerLen))
		return
	case !onMenu:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%q is not on the menu", req.Pizza))
		return
	}
	payload, err := json.Marshal(Order{ID: req.ID, Customer: req.Customer, Pizza: item.Name, PriceCents: item.PriceCents, PlacedAt: time.Now()})
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	res, err := s.producer.Publish(ctx, &client.Message{ID: req.ID, Key: []byte(req.ID), Payload: payload})
	if err != nil {
		// The publish may still land; a retry with the same id is safe.
		writeError(w, http.StatusServiceUnavailable, "the order could not be stored yet; retry with the same id")
		return
	}
	kind := "new"
	if res.Duplicate {
		kind = "dup"
	}
	if err := s.accepted.append(req.ID, kind); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, orderResponse{ID: req.ID, Duplicate: res.Duplicate, Partition: res.Partition, Offset: res.Offset})
}

// proxy forwards a request to the supervisor's control server.
func (s *storefront) proxy(method, path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.control == "" {
			writeError(w, http.StatusServiceUnavailable, "no supervisor: run the storefront through `go run ./examples/pizza`")
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), method, s.control+path, nil)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		resp, err := s.http.Do(req)
		if err != nil {
			writeError(w, http.StatusBadGateway, "the supervisor did not answer")
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
