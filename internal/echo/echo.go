// Package echo bounds what an error repeats of a request: a name, id, key
// or header a client sent may be megabytes long or not valid UTF-8, and a
// status message quoting it whole would send it back (and log it) whole.
package echo

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// MaxBytes is how much of a value Quote repeats. Quoted, with every byte
// escaped at worst (\xff: 4 characters), it stays under 256 bytes.
const MaxBytes = 48

// Quote is s quoted as %q does, its first MaxBytes bytes only; a longer s
// is cut at a rune boundary and its length said: "abc…" (7340032 bytes).
func Quote(s string) string {
	if len(s) <= MaxBytes {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s (%d bytes)", strconv.Quote(Cut(s, MaxBytes)), len(s))
}

// Cut is s cut to at most n bytes, "…" included, at a rune boundary: valid
// UTF-8 stays valid. An s of at most n bytes is returned as it is.
func Cut(s string, n int) string {
	const ellipsis = "…"
	if len(s) <= n {
		return s
	}
	n -= len(ellipsis)
	if n <= 0 {
		return ellipsis[:0]
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + ellipsis
}
