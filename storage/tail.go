package storage

import "sync"

// tailCache holds a partition's newest durable messages, contiguous in
// offset, up to a byte budget, so readers at or near the head (tailing
// consumers) are served from memory and only lagging readers go to Badger.
// The syncer appends each group once it is durable, before it publishes the
// new head, so a reader that sees the head finds its messages here. The
// cached messages share memory with what Append was given and with what Read
// returns: none of them may be modified.
type tailCache struct {
	mu    sync.RWMutex // guards msgs, sizes, start and bytes
	msgs  []Message    // msgs[i].Offset == start+i
	sizes []int        // record size of msgs[i]
	start uint64
	bytes int
	max   int // byte budget; 0 disables the cache
}

func newTailCache(maxBytes int) *tailCache { return &tailCache{max: maxBytes} }

// append adds durable messages, in offset order. A gap (a group whose sync
// failed, say) restarts the cache at the new messages. The oldest are
// evicted past the budget.
func (c *tailCache) append(msgs []Message, sizes []int) {
	if c.max == 0 || len(msgs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 || msgs[0].Offset != c.start+uint64(len(c.msgs)) {
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
}

// reset empties the cache: the partition's messages were replaced (an
// import), and offsets may hold other messages now.
func (c *tailCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.msgs)
	c.msgs, c.sizes, c.start, c.bytes = nil, nil, 0, 0
}

// trim drops messages below first (removed by retention).
func (c *tailCache) trim(first uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if first <= c.start {
		return
	}
	drop := int(min(first-c.start, uint64(len(c.msgs))))
	for _, n := range c.sizes[:drop] {
		c.bytes -= n
	}
	c.dropFront(drop)
	c.start = max(c.start, first)
}

// dropFront removes the first n messages; c.mu must be held. It copies the
// rest down once the dead front is large, so memory does not creep.
func (c *tailCache) dropFront(n int) {
	if n == 0 {
		return
	}
	c.start += uint64(n)
	clear(c.msgs[:n]) // let the dropped payloads go
	c.msgs, c.sizes = c.msgs[n:], c.sizes[n:]
	if cap(c.msgs) > 2*len(c.msgs)+1024 {
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
