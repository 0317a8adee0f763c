// Package storage is ferry's durable log: topics split into partitions of
// messages with dense offsets, kept in one Badger database.
//
// # Model
//
// A Store owns the Badger database, one Partition per partition of every
// topic, and a syncer. A Partition owns its write path: a queue of commands
// (append a batch, trim below an offset, forget expired ids) and the
// one goroutine that applies them. That goroutine gathers everything queued
// into a group, applies the group with partitionState.apply in a Badger
// transaction — one shared by the groups of every partition committing at
// the time (the committer, commit.go) — commits it, durably under
// FsyncAlways (Badger syncs each write, gathering the commits waiting into
// one: group commit), and passes it to the syncer, which answers the
// callers and makes the new messages visible to readers, in commit order.
// Offsets and
// dedup decisions are made in apply and nowhere else; apply reads no clock
// (the time is an argument), so the same commands replayed give the same
// log — the seam where replication proposes command batches instead.
//
// An idle partition holds no goroutine and no queue: its writer starts with
// the first command queued and exits once the queue is empty, leaving the
// state (head, dedup index) in the Partition for the next. Open reads one
// meta key per partition and starts nothing, so a store of 100,000 idle
// partitions costs about 1 KiB of memory each. The tail caches are bounded
// per partition and together (Options.TailCacheTotalBytes), the oldest
// messages of any partition going first.
//
// # Durability
//
// With FsyncAlways an append is answered after the fsync covering it;
// with FsyncNever after its transaction commits (it then survives a process
// crash in the page cache, not a power loss). Under FsyncAlways Badger
// syncs each write (SyncWrites): the value log holding its payloads first,
// then the memtable WAL whose entries point into it, so no durable pointer
// leads to a payload a power cut took (Badger's own DB.Sync syncs them the
// other way round). A rotated value-log file is synced as it is closed.
// Under FsyncNever the OS writes both back in any order: a power cut (not a
// process crash) can leave the newest records of a partition unreadable.
//
// # Reads
//
// Read sees a partition as of its last durable group: never a message that
// could still vanish in a crash. Reads below the first retained offset fail
// with *OffsetOutOfRangeError.
//
// # Dedup
//
// An id published within the dedup window has a d key in Badger (dedup.go),
// written with its message in one transaction, so replicas decide alike.
// Each partition's writer keeps bloom filters of its ids in memory, about
// 2 bytes an id and bounded per partition, so a fresh id needs no Badger
// read. Expiry deletes the d keys a window old as it walks the message keys,
// which hold the ids. When a partition's writer first starts after Open it reads its d keys
// into the filters; appends wait for that, reads do not. An id whose message
// retention removed before its window ended is forgotten at the next start.
//
// # Retention
//
// A background pass (Options.RetentionInterval on the injected clock)
// computes each partition's trim point from its message keys alone and
// queues trim commands through the partition's writer, like appends, plus a
// command that drops expired ids from memory. Payloads of
// Options.ValueThreshold bytes or more (512 by default) are in Badger's
// value log; value-log GC (collectValueLog) runs every Options.GCInterval
// and rewrites the files Badger's discard statistics say are half garbage.
//
// # Raft logs
//
// For replication, each Raft group (go.etcd.io/raft/v3) keeps its log, hard
// state and latest snapshot in the same database, under its own key prefix:
// Store.RaftLog hands out a RaftLog, which implements raft.Storage with
// raft.MemoryStorage's semantics plus Save, CreateSnapshot and Compact for
// the node's Ready loop. Its writes go through the same syncer as appends,
// so one fsync covers partitions and groups alike. Groups are independent
// of topics and of each other; DropRaftLog deletes one.
//
// # Replicated partitions
//
// Store.Replicate makes a partition replicated: its writer still gathers
// groups, but encodes each as an entry (entry.go: the commands, the
// leader's time and a proposal id) and proposes it through a Proposer
// instead of committing it. Every replica applies the committed entries in
// log order through Replica.Apply, with applyEntry, which stores the
// entry's Raft index in the partition meta in the same transaction; on the
// proposing node the proposal id finds the group's requests and answers
// them with the entry's results (replica.go). A write across partitions of
// which some are replicated cannot be one transaction: Write makes it in
// order, outputs first, and needs an id on every message.
//
// The entry is the data: once the proposer tells the group's log
// (EntryLog), an applied message's m key holds a reference to it in its
// entry instead of a copy of its record, so each payload is written once
// per node (refs.go). Reads and exports resolve references; the group's
// log is never compacted past the oldest entry a retained message
// references (the partition's pin, which retention's trims move).
//
// A replica too far behind its group's compacted log gets a copy of the
// partition from a peer instead: Replica.Export reads every key of the
// partition in one read transaction taken while the writer waits, cut into
// chunks (export.go), and Replica.Import writes them in place of this
// node's, checked, as they arrive, the applied index last (import.go).
// Replica.Sync makes every apply durable before the group compacts.
//
// Topic and subscription changes can be stamped (stamp.go): made with a
// given time, id and Raft index instead of the clock's, for the metadata
// group that replicates them.
//
// # Disk space
//
// Badger writes its files through mmap, and a write into a mapped file on a
// full filesystem is SIGBUS, not an error: the store must stop before the
// disk fills. Its diskGuard (diskguard.go) reads the data directory's free
// space every Options.DiskPollInterval and after every MiB of appends, and
// refuses with *DiskFullError: appends below Options.DiskReserve, every
// write but deletes and retention below half of it, every write after a
// disk error from Badger. Open, with less than half the reserve free, cuts
// Badger's memtable logs as Badger would (wal.go) and opens it read-only;
// Store.Reopen says when to open it again. A topic deleted on a low disk is
// dropped with DropPrefix (disk.go), then value-log GC rewrites the files a
// fifth garbage or more, so its space comes back at once.
//
// The key layout is drawn in keys.go and the record formats in record.go
// (the Raft log bounds in raftlog.go, partition entries in entry.go,
// export chunks in export.go).
package storage
