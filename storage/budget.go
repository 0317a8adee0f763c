package storage

import (
	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// SizeFor returns o with every size that grows the store's memory derived
// from a memory budget of budget bytes (the broker's --memory-limit; 0 or
// less keeps o's sizes, the defaults being those of a 512 MiB budget).
// Per share of the budget:
//
//	memtables    NumMemTables × MemTableBytes  budget/32 each, 8 to 64 MiB,
//	                                           at least MinMemTableBytesFor
//	block cache  BlockCacheBytes               budget/32, 4 to 256 MiB
//	index cache  IndexCacheBytes               budget/64, 2 to 128 MiB
//	tables       BaseTableBytes                1 MiB under 512 MiB, else 2 MiB
//	value log    ValueLogFileBytes             budget/8, 16 to 64 MiB
//	tail cache   TailCacheBytes per partition  budget/2048, 64 KiB to 1 MiB
//	groups       MaxGroupBytes                 budget/64, 1 to 8 MiB
//
// What is left (half the budget or more) is for publishes in flight, the
// dedup index, subscriptions, gRPC buffers and the Go runtime's headroom;
// the broker's admission control keeps publishes within it.
func (o Options) SizeFor(budget int64) Options {
	if budget <= 0 {
		return o
	}
	o.MemTableBytes = max(clamp(budget/32, minMemTableFloor, 64<<20), MinMemTableBytesFor(o.ValueThreshold))
	o.BlockCacheBytes = clamp(budget/32, 4<<20, 256<<20)
	o.IndexCacheBytes = clamp(budget/64, 2<<20, 128<<20)
	o.BaseTableBytes = 2 << 20
	if budget < 512<<20 {
		o.BaseTableBytes = 1 << 20
	}
	o.ValueLogFileBytes = clamp(budget/8, 16<<20, 64<<20)
	o.TailCacheBytes = int(clamp(budget/2048, 64<<10, 1<<20))
	o.MaxGroupBytes = int(clamp(budget/64, 1<<20, 8<<20))
	return o
}

// Footprint is what the sizes in o let Badger and the caches hold at most
// per store, in bytes, not counting the tail caches (per partition): the
// memtables plus one being flushed (its table is built in memory), the
// block and index caches, and the tables the compactors build.
func (o Options) Footprint() int64 {
	return int64(o.NumMemTables+1)*o.MemTableBytes + o.BlockCacheBytes + o.IndexCacheBytes +
		int64(o.NumCompactors)*4*o.BaseTableBytes
}

func clamp(v, lo, hi int64) int64 {
	return max(lo, min(v, hi))
}

// badgerOptions is how the store configures Badger (the raw baseline
// benchmark opens Badger the same way). Every size that grows Badger's
// memory comes from opts (SizeFor derives them from a memory budget):
// memtables (each a skiplist arena), the caches, and table building — a
// memtable flush builds a whole L0 table in memory, a compaction up to
// NumCompactors tables of BaseTableBytes at once.
func badgerOptions(opts Options) badger.Options {
	return badger.DefaultOptions(opts.Dir).
		WithLogger(badgerLogger{opts.Logger}).
		// Under FsyncAlways Badger syncs each of its write batches before
		// the commits in it return: the value log first, then the memtable
		// WAL whose entries point into it. Its DB.Sync does the two the
		// other way round, so a power cut between them left durable
		// pointers to payloads never written (TestPowerCutBetweenLogSyncs).
		// Badger gathers the commits waiting into one batch, a group
		// commit of every partition.
		WithSyncWrites(opts.Fsync == FsyncAlways).
		WithDetectConflicts(false).
		WithNumVersionsToKeep(1).
		WithMemTableSize(opts.MemTableBytes).
		WithNumMemtables(opts.NumMemTables).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(opts.BlockCacheBytes).
		WithIndexCacheSize(opts.IndexCacheBytes).
		WithBaseTableSize(opts.BaseTableBytes).
		WithBaseLevelSize(4 * opts.BaseTableBytes).
		// Values of ValueThreshold bytes or more go to the value log, so the
		// LSM tree, its memtables and the tables compactions build hold keys
		// and pointers only. Badger's synced writes sync the value log and the
		// memtable's WAL both: an acked publish survives power loss either
		// way. Measured in docs/benchmarks.md (memory budget).
		WithValueThreshold(int64(opts.ValueThreshold)).
		WithValueLogFileSize(opts.ValueLogFileBytes).
		WithNumCompactors(opts.NumCompactors).
		// No compression: the LSM tree holds keys, value-log pointers and
		// small records, and a table builder keeps a compressed copy of
		// every block beside the plain one until the table is written.
		WithCompression(options.None)
}
