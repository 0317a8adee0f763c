package echo

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuoteIsBounded(t *testing.T) {
	for _, s := range []string{"", "orders", strings.Repeat("x", 7<<20), strings.Repeat("\xff", 1000),
		strings.Repeat("é", 1000), strings.Repeat("\x00", 100)} {
		q := Quote(s)
		if len(q) > 256 {
			t.Errorf("Quote of %d bytes is %d bytes", len(s), len(q))
		}
		if len(s) <= MaxBytes && q[1:len(q)-1] != strings.Trim(q, `"`) {
			t.Errorf("Quote(%q) = %s", s, q)
		}
	}
	if got := Quote("orders"); got != `"orders"` {
		t.Errorf("Quote(orders) = %s", got)
	}
}

func TestCutKeepsUTF8(t *testing.T) {
	s := strings.Repeat("é", 100)
	for n := 0; n < 40; n++ {
		c := Cut(s, n)
		if len(c) > max(n, 0) || !utf8.ValidString(c) {
			t.Errorf("Cut(_, %d) = %q (%d bytes)", n, c, len(c))
		}
	}
	if Cut("abc", 3) != "abc" {
		t.Error("Cut shortened a string that fit")
	}
}
