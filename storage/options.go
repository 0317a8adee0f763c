package storage

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrymq/ferry/internal/clock"
	"github.com/ferrymq/ferry/internal/echo"
)

// FsyncPolicy says when appended data is forced to disk.
type FsyncPolicy int

const (
	// FsyncAlways syncs every group commit before any append in it is
	// answered: an acknowledged append survives power loss.
	FsyncAlways FsyncPolicy = iota
	// FsyncNever leaves syncing to the OS. An acknowledged append survives a
	// process crash (the data is in the page cache) but not power loss.
	FsyncNever
)

// String returns "always" or "never".
func (p FsyncPolicy) String() string {
	switch p {
	case FsyncAlways:
		return "always"
	case FsyncNever:
		return "never"
	}
	return fmt.Sprintf("FsyncPolicy(%d)", int(p))
}

// ParseFsyncPolicy parses "always" or "never".
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch s {
	case "always":
		return FsyncAlways, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("fsync policy %q: want always or never: %w", s, ErrInvalidConfig)
}

// Options configures a Store. Start from DefaultOptions.
type Options struct {
	// Dir is the data directory; it is created if missing. Required.
	Dir string
	// Fsync is when appends are synced to disk. Default FsyncAlways.
	Fsync FsyncPolicy
	// Clock drives publish times, dedup expiry, retention and GC. Default
	// the wall clock.
	Clock clock.Clock
	// Logger receives the store's logs, Badger's among them. Default
	// slog.Default().
	Logger *slog.Logger
	// RetentionInterval is how often retention and dedup expiry run.
	// Default 10s.
	RetentionInterval time.Duration
	// GCInterval is how often Badger's value log is garbage-collected,
	// besides right after a topic is dropped on a low disk. Default 1m.
	GCInterval time.Duration
	// PageOutInterval is how often the pages of Badger's value-log, table
	// and memtable-WAL files, which Badger maps into memory, are handed
	// back to the page cache (Linux: madvise MADV_PAGEOUT), so that the
	// data written does not stay in the broker's resident memory. 0 turns
	// it off. Default 250ms.
	PageOutInterval time.Duration
	// MaxGroupBytes bounds the bytes of messages one partition writer
	// commits in one transaction (a group commit). Default 8 MiB; a single
	// append larger than this is still committed, alone.
	MaxGroupBytes int
	// MaxGroupAppends bounds the appends gathered into one group commit.
	// Default 1024.
	MaxGroupAppends int
	// QueueLength is how many appends may wait for a partition's writer
	// before Append blocks. Default 4096.
	QueueLength int
	// MemTableBytes is the size of one Badger memtable. Default 16 MiB, at
	// least MinMemTableBytesFor(ValueThreshold) (8 MiB at the default
	// threshold, 30 MiB with every value inline): Badger caps a transaction
	// at 15% of a memtable, and a full publish batch must fit in one.
	MemTableBytes int64
	// NumMemTables is how many memtables Badger keeps, the one written and
	// those waiting to be flushed. Default 2, at least 2.
	NumMemTables int
	// BlockCacheBytes is the size of Badger's block cache. Default 16 MiB.
	BlockCacheBytes int64
	// IndexCacheBytes bounds the memory of Badger's table indexes and bloom
	// filters; 0 keeps every table's index in memory. Default 8 MiB.
	IndexCacheBytes int64
	// BaseTableBytes is the size of an SST at Badger's base level, and so
	// of each table a compaction builds in memory. Default 2 MiB.
	BaseTableBytes int64
	// NumCompactors is how many compactions Badger runs at once, each
	// building tables in memory. Default 2, at least 2.
	NumCompactors int
	// ValueThreshold is the smallest value, in bytes, that Badger keeps in
	// its value log instead of the LSM tree (below it the value is
	// inline). Default 512: a message's payload goes to the value log, so
	// memtables, table builds and compactions carry keys and pointers
	// only; their space comes back through value-log GC (gcTick), which
	// Badger's compactions and DropPrefix feed with discard statistics.
	// 1 to 1 MiB; MemTableBytes must be at least
	// MinMemTableBytesFor(ValueThreshold).
	ValueThreshold int
	// ValueLogFileBytes is the size of one value log file, the unit in
	// which value-log GC gives space back. Default 64 MiB.
	ValueLogFileBytes int64
	// TailCacheBytes is, per partition, how many bytes of the newest durable
	// messages are kept in memory for readers at the head, and per Raft
	// group, how many bytes of its newest log entries (RaftLog). Default
	// 1 MiB; 0 turns the caches off.
	TailCacheBytes int
	// DiskReserve is the free space kept on the data directory's
	// filesystem: below it appends are refused, below half of it every
	// write but deletes and retention (DiskFullError). Default 5% of the
	// filesystem; never below MinDiskReserve (a fixed size under it is
	// refused, a percentage under it raised to it).
	DiskReserve DiskReserve
	// DiskPollInterval is how often the filesystem's free space is read,
	// besides after every MiB of appends. Default 1s.
	DiskPollInterval time.Duration
	// TailCacheTotalBytes bounds the partitions' tail caches together: past
	// it, the oldest cached messages of any partition are dropped first, so
	// idle partitions' caches empty out and busy ones keep their newest.
	// Default 64 MiB; 0: no bound beyond TailCacheBytes per partition.
	TailCacheTotalBytes int
	// Metrics records the store's metrics (NewMetrics); nil records none.
	Metrics *Metrics
	// Replicated makes every partition a replicated one (cluster mode): a
	// partition takes writes only once Store.Replicate has given it a
	// proposer, and fails them with ErrNotReplicated until then, so that
	// nothing is ever committed on one node alone. Writes across
	// partitions are made in order (see Submit).
	Replicated bool
}

// DefaultOptions returns the default options for a store in dir.
func DefaultOptions(dir string) Options {
	return Options{
		Dir:               dir,
		Fsync:             FsyncAlways,
		Clock:             clock.Real(),
		Logger:            slog.Default(),
		RetentionInterval: 10 * time.Second,
		GCInterval:        time.Minute,
		PageOutInterval:   250 * time.Millisecond,
		MaxGroupBytes:     8 << 20,
		MaxGroupAppends:   1024,
		QueueLength:       4096,
		MemTableBytes:     16 << 20,
		NumMemTables:      2,
		BlockCacheBytes:   16 << 20,
		IndexCacheBytes:   8 << 20,
		BaseTableBytes:    2 << 20,
		NumCompactors:     2,
		ValueThreshold:    512,
		ValueLogFileBytes: 64 << 20,
		TailCacheBytes:    1 << 20,
		DiskReserve:       DefaultDiskReserve,
		DiskPollInterval:  time.Second,

		TailCacheTotalBytes: 64 << 20,
	}
}

// Validate reports the first field that is not acceptable.
func (o *Options) Validate() error {
	switch {
	case o.Dir == "":
		return fmt.Errorf("option Dir is empty: %w", ErrInvalidConfig)
	case o.Fsync != FsyncAlways && o.Fsync != FsyncNever:
		return fmt.Errorf("option Fsync %v: %w", o.Fsync, ErrInvalidConfig)
	case o.Clock == nil:
		return fmt.Errorf("option Clock is nil: %w", ErrInvalidConfig)
	case o.Logger == nil:
		return fmt.Errorf("option Logger is nil: %w", ErrInvalidConfig)
	case o.RetentionInterval <= 0:
		return fmt.Errorf("option RetentionInterval %v must be positive: %w", o.RetentionInterval, ErrInvalidConfig)
	case o.GCInterval <= 0:
		return fmt.Errorf("option GCInterval %v must be positive: %w", o.GCInterval, ErrInvalidConfig)
	case o.PageOutInterval < 0:
		return fmt.Errorf("option PageOutInterval %v is negative: %w", o.PageOutInterval, ErrInvalidConfig)
	case o.MaxGroupBytes <= 0:
		return fmt.Errorf("option MaxGroupBytes %d must be positive: %w", o.MaxGroupBytes, ErrInvalidConfig)
	case o.MaxGroupAppends <= 0:
		return fmt.Errorf("option MaxGroupAppends %d must be positive: %w", o.MaxGroupAppends, ErrInvalidConfig)
	case o.QueueLength <= 0:
		return fmt.Errorf("option QueueLength %d must be positive: %w", o.QueueLength, ErrInvalidConfig)
	case o.MemTableBytes < minMemTableFloor:
		return fmt.Errorf("option MemTableBytes %d must be at least %d (8 MiB): %w", o.MemTableBytes, minMemTableFloor, ErrInvalidConfig)
	case o.NumMemTables < 2:
		return fmt.Errorf("option NumMemTables %d must be at least 2: %w", o.NumMemTables, ErrInvalidConfig)
	case o.IndexCacheBytes < 0:
		return fmt.Errorf("option IndexCacheBytes %d is negative: %w", o.IndexCacheBytes, ErrInvalidConfig)
	case o.BaseTableBytes < 1<<20:
		return fmt.Errorf("option BaseTableBytes %d must be at least 1 MiB: %w", o.BaseTableBytes, ErrInvalidConfig)
	case o.NumCompactors < 2:
		return fmt.Errorf("option NumCompactors %d must be at least 2: %w", o.NumCompactors, ErrInvalidConfig)
	case o.ValueThreshold < 1 || o.ValueThreshold > 1<<20:
		return fmt.Errorf("option ValueThreshold %d must be 1 to %d (1 MiB): %w", o.ValueThreshold, 1<<20, ErrInvalidConfig)
	case o.MemTableBytes < MinMemTableBytesFor(o.ValueThreshold):
		return fmt.Errorf("option MemTableBytes %d must be at least %d with ValueThreshold %d: a full publish batch of values kept inline must fit in one transaction: %w",
			o.MemTableBytes, MinMemTableBytesFor(o.ValueThreshold), o.ValueThreshold, ErrInvalidConfig)
	case o.ValueLogFileBytes < 1<<20 || o.ValueLogFileBytes >= 1<<30:
		return fmt.Errorf("option ValueLogFileBytes %d must be 1 MiB to 1 GiB: %w", o.ValueLogFileBytes, ErrInvalidConfig)
	case o.TailCacheBytes < 0:
		return fmt.Errorf("option TailCacheBytes %d is negative: %w", o.TailCacheBytes, ErrInvalidConfig)
	case o.TailCacheTotalBytes < 0:
		return fmt.Errorf("option TailCacheTotalBytes %d is negative: %w", o.TailCacheTotalBytes, ErrInvalidConfig)
	case o.BlockCacheBytes < 0:
		return fmt.Errorf("option BlockCacheBytes %d is negative: %w", o.BlockCacheBytes, ErrInvalidConfig)
	case o.DiskReserve.Percent < 0 || o.DiskReserve.Percent >= 100:
		return fmt.Errorf("option DiskReserve %v%% must be above 0%% and below 100%%: %w", o.DiskReserve.Percent, ErrInvalidConfig)
	case o.DiskReserve.Percent == 0 && o.DiskReserve.Bytes > 0 && o.DiskReserve.Bytes < MinDiskReserve(*o):
		return fmt.Errorf("option DiskReserve %s is below the minimum %s (four memtables and two value-log files: Badger's own flushes, compactions and value-log GC must fit once publishing is refused): %w",
			FormatBytes(o.DiskReserve.Bytes), FormatBytes(MinDiskReserve(*o)), ErrInvalidConfig)
	case o.DiskPollInterval <= 0:
		return fmt.Errorf("option DiskPollInterval %v must be positive: %w", o.DiskPollInterval, ErrInvalidConfig)
	}
	return nil
}

// MinMemTableBytes is a memtable size accepted at the default
// ValueThreshold (at least MinMemTableBytesFor it), for tests and small
// brokers.
const MinMemTableBytes = 32 << 20

// minMemTableFloor is the smallest memtable at any ValueThreshold.
const minMemTableFloor = 8 << 20

// Bounds of the largest write the store must take in one transaction: a
// full publish batch (the broker's limits, 1000 messages of at most 4 MiB
// in all), each message an entry of its key (at most maxKeyBytes, with a
// 128-byte id) and its value.
const (
	fullBatchMessages = 1000
	fullBatchBytes    = 4 << 20
	maxKeyBytes       = 256
)

// MinMemTableBytesFor is the smallest memtable that takes a full publish
// batch in one transaction when values below threshold bytes are inline.
// Badger caps a transaction at 15% of a memtable, counting an inline value
// in full and one in the value log as a 12-byte pointer: with 1 KiB
// messages in the value log a batch weighs ~0.2 MB, inline ~1.3 MB, and
// with 1 MiB inline (everything) up to 4.2 MB, which takes 29 MiB.
func MinMemTableBytesFor(threshold int) int64 {
	inline := min(int64(fullBatchMessages)*int64(threshold+maxKeyBytes), fullBatchBytes+fullBatchMessages*maxKeyBytes)
	return max(minMemTableFloor, inline*100/15+1<<20)
}

// Limits on topic configs.
const (
	MaxPartitions          = 1024
	DefaultDedupWindow     = 2 * time.Minute
	MaxDedupWindow         = 7 * 24 * time.Hour
	DefaultMaxMessageBytes = 1 << 20
	MaxMessageBytesLimit   = 4 << 20
	MaxTopicNameLen        = 200
	// MaxIDBytes is the longest message id stored; it rides in the key.
	MaxIDBytes = 128
)

// TopicConfig is a topic's configuration. Zero fields mean the default;
// WithDefaults fills them in.
type TopicConfig struct {
	// Partitions is the partition count, 1 to 1024. Default 1. Fixed at
	// creation.
	Partitions uint32
	// RetentionMaxAge deletes messages older than this. 0: no limit.
	RetentionMaxAge time.Duration
	// RetentionMaxBytes deletes a partition's oldest messages while it holds
	// more record bytes than this. 0: no limit.
	RetentionMaxBytes uint64
	// RetentionMaxMessages deletes a partition's oldest messages while it
	// holds more than this many. 0: no limit.
	RetentionMaxMessages uint64
	// DedupWindow is how long a message id is remembered per partition; a
	// repeat inside it gets the original offset back. Default 2m, at most 7d.
	DedupWindow time.Duration
	// MaxMessageBytes is the largest payload accepted, in bytes. Default
	// 1 MiB, at most 4 MiB.
	MaxMessageBytes uint32
}

// WithDefaults returns c with zero fields set to their defaults.
func (c TopicConfig) WithDefaults() TopicConfig {
	if c.Partitions == 0 {
		c.Partitions = 1
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	return c
}

// Validate reports the first field of a defaulted config that is out of
// range, naming it.
func (c TopicConfig) Validate() error {
	switch {
	case c.Partitions < 1 || c.Partitions > MaxPartitions:
		return fmt.Errorf("partitions %d must be 1 to %d: %w", c.Partitions, MaxPartitions, ErrInvalidConfig)
	case c.RetentionMaxAge < 0:
		return fmt.Errorf("retention max age %v is negative: %w", c.RetentionMaxAge, ErrInvalidConfig)
	case c.DedupWindow <= 0 || c.DedupWindow > MaxDedupWindow:
		return fmt.Errorf("dedup window %v must be more than 0 and at most %v: %w", c.DedupWindow, MaxDedupWindow, ErrInvalidConfig)
	case c.MaxMessageBytes < 1 || c.MaxMessageBytes > MaxMessageBytesLimit:
		return fmt.Errorf("max message bytes %d must be 1 to %d: %w", c.MaxMessageBytes, MaxMessageBytesLimit, ErrInvalidConfig)
	}
	return nil
}

// ValidateTopicName reports whether name is 1 to 200 characters of
// [A-Za-z0-9._-], other than "." and "..".
func ValidateTopicName(name string) error { return validateName("topic", name) }

// validateName checks a topic or subscription name: 1 to MaxTopicNameLen
// characters from A-Z a-z 0-9 . _ -.
func validateName(kind, name string) error {
	if len(name) == 0 || len(name) > MaxTopicNameLen {
		return fmt.Errorf("%s name %s must be 1 to %d characters: %w", kind, echo.Quote(name), MaxTopicNameLen, ErrInvalidConfig)
	}
	if name == "." || name == ".." {
		// A path element's meaning in URLs, files and tools.
		return fmt.Errorf("%s name %q is reserved; use letters, digits or more characters: %w", kind, name, ErrInvalidConfig)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%s name %s has %q at byte %d; allowed are A-Z a-z 0-9 . _ -: %w", kind, echo.Quote(name), c, i, ErrInvalidConfig)
		}
	}
	return nil
}
