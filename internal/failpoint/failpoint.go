// Package failpoint marks points in the broker where a test may crash or
// stall the process, to hit a window that is otherwise too narrow to hit
// by chance (a crash between two writes, an answer racing a commit).
//
// Hit does nothing unless the binary is built with the build tag
// ferry_failpoints (failpoint_on.go), so the shipped broker never stops at
// one. Such a binary reads its failpoint from the environment:
//
//	FERRY_FAILPOINT         the point's name (below)
//	FERRY_FAILPOINT_ACTION  kill (SIGKILL itself, the default) or sleep:DURATION
//	FERRY_FAILPOINT_EVERY   act at every n-th pass only (default 1)
//	FERRY_FAILPOINT_WHILE   act only while this file exists
//
// Points:
//
//	ordered-write-between-parts  storage's writeOrdered stored some parts of
//	                             a write across Raft groups (a cluster
//	                             Commit's outputs) but not the rest
//	partition-before-commit      a partition writer (or the committer, for
//	                             several) applied groups of appends to a
//	                             transaction and is about to
//	                             commit it: nothing of it may have been
//	                             answered yet
package failpoint

// hit is what Hit does: nothing, but in a ferry_failpoints build.
var hit = func(name string) {}

// Hit marks the failpoint name.
func Hit(name string) { hit(name) }
