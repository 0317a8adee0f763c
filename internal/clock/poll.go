package clock

import (
	"sync"
	"time"
)

// Poll calls a function every interval on a clock, from Start until Stop:
// how the broker watches files it reloads (certificates, tokens, policy,
// key sets). Each call starts the next interval once it returns, so calls
// never overlap. Its methods are safe for concurrent use.
type Poll struct {
	clk      Clock
	interval time.Duration
	fn       func()

	mu      sync.Mutex // guards timer and stopped
	timer   Timer
	stopped bool
}

// NewPoll returns a Poll of fn every interval on clk; it does not run
// until Start.
func NewPoll(clk Clock, interval time.Duration, fn func()) *Poll {
	return &Poll{clk: clk, interval: interval, fn: fn}
}

// Start schedules the first call, an interval from now. Once only; not
// after Stop.
func (p *Poll) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.timer != nil {
		return
	}
	p.timer = p.clk.AfterFunc(p.interval, p.tick)
}

func (p *Poll) tick() {
	p.fn()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.timer = p.clk.AfterFunc(p.interval, p.tick)
	}
}

// Stop ends the calls (one under way finishes). Idempotent.
func (p *Poll) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.timer != nil {
		p.timer.Stop()
	}
}
