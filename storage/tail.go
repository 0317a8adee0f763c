package storage

import "sync"

// tailCache holds a partition's newest durable messages, contiguous in
// offset, up to a byte budget, so readers at or near the head (tailing
// consumers) are served from memory and only lagging readers go to Badger.
// The syncer appends each group once it is durable, before it publishes the
// new head, so a reader that sees the head finds its messages here. The
// cached messages share memory with what Append was given and with what Read
// returns: none of them may be modified.
//
// Two bounds hold: max per partition, and the store's tailBudget over all
// partitions, which evicts the oldest groups of any partition first. An
// empty cache holds no arrays.
type tailCache struct {
	mu     sync.RWMutex // guards msgs, sizes, start and bytes
	msgs   []Message    // msgs[i].Offset == start+i
	sizes  []int        // record size of msgs[i]
	start  uint64
	bytes  int
	max    int         // byte budget; 0 disables the cache
	budget *tailBudget // the store's; nil for none
}

func newTailCache(maxBytes int, budget *tailBudget) *tailCache {
	return &tailCache{max: maxBytes, budget: budget}
}

// append adds durable messages, in offset order. A gap (a group whose sync
// failed, say) restarts the cache at the new messages. The oldest are
// evicted past the partition's budget, then past the store's.
func (c *tailCache) append(msgs []Message, sizes []int) {
	if c.max == 0 || len(msgs) == 0 {
		return
	}
	c.mu.Lock()
	bytes, n := c.bytes, len(c.msgs)
	if len(c.msgs) == 0 || msgs[0].Offset != c.start+uint64(len(c.msgs)) {
		clear(c.msgs)
		c.msgs, c.sizes, c.bytes = c.msgs[:0], c.sizes[:0], 0
		c.start = msgs[0].Offset
	}
	c.msgs = append(c.msgs, msgs...)
	c.sizes = append(c.sizes, sizes...)
	for _, n := range sizes {
		c.bytes += n
	}
	drop := 0
	for c.bytes > c.max && drop < len(c.msgs) {
		c.bytes -= c.sizes[drop]
		drop++
	}
	c.dropFront(drop)
	end := c.start + uint64(len(c.msgs))
	dBytes, dMsgs := c.bytes-bytes, len(c.msgs)-n
	c.mu.Unlock()
	c.budget.charge(c, end, dBytes, dMsgs)
}

// reset empties the cache: the partition's messages were replaced (an
// import), and offsets may hold other messages now.
func (c *tailCache) reset() {
	c.mu.Lock()
	bytes, n := c.bytes, len(c.msgs)
	clear(c.msgs)
	c.msgs, c.sizes, c.start, c.bytes = nil, nil, 0, 0
	c.mu.Unlock()
	c.budget.charge(c, 0, -bytes, -n)
}

// trim drops messages below first (removed by retention).
func (c *tailCache) trim(first uint64) {
	bytes, n := c.dropBelow(first)
	c.budget.charge(c, 0, -bytes, -n)
}

// dropBelow drops the messages below off and returns the bytes and
// messages dropped.
func (c *tailCache) dropBelow(off uint64) (bytes, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off <= c.start {
		return 0, 0
	}
	n = int(min(off-c.start, uint64(len(c.msgs))))
	for _, s := range c.sizes[:n] {
		bytes += s
	}
	c.bytes -= bytes
	c.dropFront(n)
	c.start = max(c.start, off)
	return bytes, n
}

// holds reports whether the cache may still hold messages below end.
func (c *tailCache) holds(end uint64) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.msgs) > 0 && c.start < end
}

// dropFront removes the first n messages; c.mu must be held. It copies the
// rest down once the dead front is large, and lets the arrays go once the
// cache is empty, so memory does not creep.
func (c *tailCache) dropFront(n int) {
	if n == 0 {
		return
	}
	c.start += uint64(n)
	clear(c.msgs[:n]) // let the dropped payloads go
	c.msgs, c.sizes = c.msgs[n:], c.sizes[n:]
	switch {
	case len(c.msgs) == 0:
		c.msgs, c.sizes = nil, nil
	case cap(c.msgs) > 2*len(c.msgs)+1024:
		c.msgs = append([]Message(nil), c.msgs...)
		c.sizes = append([]int(nil), c.sizes...)
	}
}

// read returns the messages from offset from below head, with Read's limits,
// if the cache holds from; ok is false if it does not.
func (c *tailCache) read(from, head uint64, maxMessages, maxBytes int) (msgs []Message, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	end := c.start + uint64(len(c.msgs))
	if len(c.msgs) == 0 || from < c.start || from >= end {
		return nil, false
	}
	i := int(from - c.start)
	bytes := 0
	for ; i < len(c.msgs) && len(msgs) < maxMessages && c.msgs[i].Offset < head; i++ {
		if len(msgs) > 0 && bytes+c.sizes[i] > maxBytes {
			break
		}
		bytes += c.sizes[i]
		msgs = append(msgs, c.msgs[i])
	}
	return msgs, true
}

// tailBudget bounds the bytes of every partition's tail cache together
// (Options.TailCacheTotalBytes). It remembers the groups appended, oldest
// first, across partitions; past the bound it drops the oldest group's
// messages from its cache — whichever partition that is — so caches of
// partitions gone idle empty out while busy ones keep their newest
// messages. Lock order: tailBudget.mu, then a tailCache's mu.
type tailBudget struct {
	mu    sync.Mutex // guards spans, head, bytes and msgs
	max   int        // bytes; 0: no bound
	spans []tailSpan // appended groups; spans[head:] may still be cached
	head  int
	bytes int // cached bytes, all partitions
	msgs  int // cached messages, all partitions
}

// tailSpan is a group appended to c: its messages are below end.
type tailSpan struct {
	c   *tailCache
	end uint64
}

func newTailBudget(maxBytes int) *tailBudget { return &tailBudget{max: maxBytes} }

// charge records that c's bytes and messages changed by dBytes and dMsgs,
// and, if end is not 0, that a group below end was appended to c; then it
// evicts the oldest groups while the caches hold more than the bound.
func (b *tailBudget) charge(c *tailCache, end uint64, dBytes, dMsgs int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bytes += dBytes
	b.msgs += dMsgs
	if end == 0 {
		return
	}
	b.spans = append(b.spans, tailSpan{c: c, end: end})
	for b.max > 0 && b.bytes > b.max && b.head < len(b.spans) {
		s := b.spans[b.head]
		b.spans[b.head] = tailSpan{}
		b.head++
		bytes, n := s.c.dropBelow(s.end)
		b.bytes -= bytes
		b.msgs -= n
	}
	// Spans whose messages left otherwise (retention, a partition's own
	// bound) are pruned once they outnumber the messages cached, so the
	// list stays proportional to the caches.
	if live := len(b.spans) - b.head; live > 2*b.msgs+1024 {
		kept := make([]tailSpan, 0, b.msgs+1024)
		for _, s := range b.spans[b.head:] {
			if s.c.holds(s.end) {
				kept = append(kept, s)
			}
		}
		b.spans, b.head = kept, 0
	} else if b.head > 1024 && b.head > len(b.spans)/2 {
		b.spans = append([]tailSpan(nil), b.spans[b.head:]...)
		b.head = 0
	}
}
