package storage

// failpoint marks a point where a test may crash the process: name says
// which. It does nothing unless the binary is built with the build tag
// ferry_failpoints (failpoint_on.go), so the shipped broker never stops at
// one. Points:
//
//	ordered-write-between-parts  writeOrdered stored some parts of a
//	                             write across Raft groups (a cluster
//	                             Commit's outputs) but not the rest
var failpoint = func(name string) {}
