// Package cluster replicates ferry's state with Raft (go.etcd.io/raft/v3):
// a multi-Raft host that runs many Raft groups on one node over one
// node-to-node transport. It is the foundation the metadata group and the
// per-partition groups of docs/design.md §8 are built on; what a group replicates
// is its StateMachine's business.
//
// # Model
//
// A Host is one node: its id, its peers' node-to-node addresses, the
// storage.Store that keeps every group's Raft log, a Clock and a
// Transport. Host.AddGroup starts a Group with a StateMachine: a new
// group is bootstrapped from a snapshot at index 1 holding its voters; a
// known one restarts from its storage.RaftLog. The Host ticks every group
// that is awake every Options.TickInterval on its Clock.
//
// # Quiescence
//
// An idle group quiesces (quiesce.go): a leader with nothing under way
// and every follower on a live node caught up sends them a quiesce
// heartbeat and stops ticking, and so do they. A proposal, a transfer or
// any other message wakes it; a quiesced follower whose leader's node is
// found down wakes and campaigns. Node liveness (liveness.go) stands in
// for the heartbeats of quiesced groups: each host sends each peer one
// beat per heartbeat interval, whatever the number of groups, and finds a
// peer down after an election timeout without a batch from it.
//
// A Group is one raft.RawNode, owned by one goroutine (its loop) with the
// group's bookkeeping, and an applier goroutine that owns the state
// machine (parked, with no goroutine, while the group is at rest). The
// loop takes one event at a time — a tick, inbound messages,
// proposals, a snapshot, a status or transfer request, the transport's
// reports, the applier's progress — and then handles every Ready: save
// the entries, hard state and snapshot (RaftLog.Save, durable on return),
// send the messages, hand the committed entries to the applier, Advance.
// It does not wait for them to apply (as etcd's server does), so a long
// apply delays no tick or heartbeat; it waits for the applier only before
// a configuration change and before restoring a snapshot
// (group_apply.go). A leader sends its appends before it saves them, so
// followers write in parallel (raft's doc, step 2); everything else is
// sent after the save. Every Options.SnapshotEntries applied entries the
// applier snapshots the state machine and the loop saves it and compacts
// the log, keeping SnapshotKeepEntries for
// slightly slow followers; one further behind gets the snapshot. A state
// machine whose snapshots only mark where they were taken (a partition's:
// its messages are in every replica's store) restores one by fetching its
// state from a peer — the snapshot's sender first, then the other voters,
// with a backoff — before the loop goes on; a restart that finds the
// state machine behind its saved snapshot does the same first thing.
//
// One loop per group, rather than one loop for all: the loops run their
// Saves concurrently, so the store's syncer covers many groups with one
// fsync (group commit across groups), and a group busy applying or
// snapshotting holds up only itself. Goroutines are cheap next to a Raft
// group's state; what does not scale with the number of groups (the
// streams, the ticker) is shared by the Host.
//
// # Proposals
//
// Group.Propose works on the leader only; elsewhere it fails at once with
// a *NotLeaderError naming the leader, for the caller to forward to. The
// entry carries a header with this node's id and a proposal number, which
// the loop strips before the state machine sees the entry; Propose
// returns when the entry with its header, at the index it was appended
// at, has been applied here — after a quorum committed it. A proposal
// whose leader stepped down or changed term before that fails with
// ErrLeadershipLost: its outcome is unknown (the new leader may still
// commit it), so callers retry idempotently. Group.ProposeAsync is the
// same without the wait, in call order, for a caller that pipelines (a
// replicated partition's writer, through storage.Proposer).
//
// A leader cut off from the majority steps down within an election
// timeout (CheckQuorum), and pre-vote keeps a node coming back from a
// partition from deposing a working leader: the minority side refuses
// writes.
//
// # Metadata
//
// Metadata is the state machine of the metadata group (MetadataGroup, a
// reserved id every node runs) and its client: topic and subscription
// changes proposed on the leader as entries stamped with its clock, and
// applied on every replica through storage's stamped calls
// (storage.Stamp), so every store has the same topics and subscriptions
// with the same ids, configs and create times. The applied index is kept
// in the same transaction as each change; a change the store refuses the
// same way everywhere is returned to the proposer and changes nothing.
//
// # Node
//
// A Node is what a broker runs as one node of a ferry cluster, on top of
// the Host: the layers are
//
//	broker        gRPC: routes a subscription's calls to its owner, serves the API
//	cluster.Node  placement, group lifecycle, metadata changes, barriers, ownership
//	cluster.Host  Raft groups (Group), their loops and appliers, the Transport
//	storage       the store: Raft logs, partitions, topics, subscriptions
//
// The Node starts the metadata group and a group for every partition of
// the store's topics (group id topic id << 32 | partition, every node a
// voter), and follows the metadata group (Metadata.Changed): a created
// topic's groups start on every node, a deleted topic's stop. It makes
// topic and subscription changes through the metadata group from any
// node, trying again while an attempt's outcome is unknown (an election);
// every change is idempotent. Its barriers (SyncMeta, SyncTopic,
// SyncPartition) return once every entry committed before is applied
// here: linearizable reads, and a new owner's cursors.
//
// Each subscription has one owner, the leader of its owner partition
// (OwnerPartition: a hash of its name). Own takes a subscription over at
// an owner epoch, the term this node leads that partition in, fencing off
// its earlier owners in every partition of the topic (storage.Store.Fence)
// before it reads the cursors. When this node stops leading a partition,
// the Node tells its Releaser (the broker's delivery engine) to release
// the subscriptions that partition owned. A Node knows nothing of gRPC
// clients or the public API: the broker routes and forwards calls, and
// turns a Node's LocalStatus into `ferry cluster status`.
//
// # Transport
//
// Transport speaks ferry.cluster.v1.RaftTransportService (proto/ferry/
// cluster/v1/raft.proto), gRPC on its own address (default :7422), node to
// node only. Each node keeps one outbound client stream per peer, fed by
// a bounded queue of messages from all its groups; Send never blocks, and
// a message the queue cannot take, or a peer whose stream is down cannot
// be sent, is dropped and reported to its group (ReportUnreachable), since
// Raft resends. A failed stream is reopened after a backoff on the Clock.
// Snapshots (MsgSnap) go on their own stream in chunks; the receiver
// reassembles them, checks size and checksum, and answers once its group
// has stepped the snapshot, and the sender reports the outcome
// (ReportSnapshot). FetchPartition goes the other way: a node restoring a
// partition snapshot asks a peer for the partition, which streams it from
// one consistent read (storage.Replica.Export) in chunks the asking node
// checks and writes as they come (storage.Replica.Import). Inbound frames are checked before anything reaches a
// group (frame.go): a malformed batch ends the peer's stream with
// INVALID_ARGUMENT. The node-to-node network is trusted beyond that: a
// well-formed message that lies about the log is Raft's to judge.
//
// # Disk
//
// A node whose store is below half its disk reserve (or read-only on a
// disk error) drops the appends with entries and the snapshots of its
// partition groups before they are stepped (diskgate.go): it holds nothing
// it acknowledged, and leaders commit with the other voters until space is
// back and their appends catch it up. It hands the partition groups it
// leads to followers. Heartbeats and the metadata group's entries still
// go.
//
// # Concurrency
//
// Host, Group, Metadata, Node and Transport methods are safe for
// concurrent use. A StateMachine is called one call at a time: from its
// group's applier, or its loop while the applier is idle. Host.Close
// stops the ticks, the transport and then every group; calls still
// waiting fail with ErrClosed. Node.Close stops the Node's goroutines and
// its Host. Neither closes the store.
package cluster
