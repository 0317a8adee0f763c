// Package ferrytest is the test kit of ferry's packages that run real
// processes: it builds a binary once per test binary (Build, Ferry), starts
// `ferry serve` and waits until it serves (Start), stops it with SIGTERM,
// kills it with SIGKILL and pauses it with SIGSTOP (Process), dials it
// (Dial), waits on a condition with a deadline (Eventually) and routes a
// logger into the test's log (Writer, Logger).
//
// It is imported only by _test.go files: nothing a shipped binary builds
// may import it (TestNotInShippedBinary checks cmd/ferry).
package ferrytest
