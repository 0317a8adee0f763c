// Package consumer is ferry's delivery engine: it decides which message goes
// to which consumer of a subscription, tracks what is outstanding, and keeps
// each subscription's promise (docs/design.md §2). It knows nothing of gRPC and reads
// time from an injected clock.
//
// # Model
//
// An Engine runs one loop per subscription in use, started on demand. A
// loop (loop.go) is a thin goroutine around a deterministic state machine,
// machine (machine.go), in the manner of etcd-raft's RawNode: every event
// — a consumer attached or detached, credit, acks, nacks, extends, a
// commit, a seek, messages fetched, a write done, a tick of the clock — is
// a method call with the time, and its effects are queued in the machine's
// output: deliveries to hand to consumers, fetches and writes to do,
// replies (plain data, by call id) to give callers. The loop does the I/O
// in other goroutines and feeds the results back as events: its inputs
// are typed events (events.go) it switches on, and its reads are in
// reader.go, shared with the tests' harness. Scenario and property tests
// drive the machine directly against a real store.
//
// Per partition the machine keeps a cursorRecord (cursor_record.go) — the
// Cursor (an ack floor plus the offsets acked above it), an epoch bumped
// by every seek, and the attempts of messages delivered and not acked —
// plus in memory the Inflight deadline heap, the messages awaiting redelivery and a
// buffer of fetched messages. The cursorRecord is what is stored: every
// write carries the whole state of a partition, written through the Log
// (storage.Store.Submit) in the partition writer's group commit, so it is
// exactly as durable as the messages. Writes of a partition are submitted
// in the order they are made and land in that order.
//
// # Guarantees
//
//   - None: nothing is stored; deliveries go out at once and are not
//     tracked; a consumer that cannot keep up misses messages.
//   - AtMostOnce: a delivery marks its offset acked in the cursor, and goes
//     out only once that write is durable. Acks free credit only.
//   - AtLeastOnce: deliveries go out at once; acks are written behind.
//     What is not durably acked is delivered again after a restart;
//     redelivery follows an ack timeout, a nack (after the backoff) or at
//     once the consumer's detach.
//   - EffectivelyOnce: attempts (the fencing token, with the deadline) are
//     written before the delivery goes out, so they survive a restart; ack
//     replies wait for the write; a delivery whose consumer left stays
//     outstanding until its deadline; acked ids are stored with a TTL and a
//     later message with one of them is skipped.
//
// A Commit or a dead letter is a write that acks offsets and appends
// messages in one transaction: its acks are applied to the machine only
// once it is durable, and no other write of its partitions is in flight
// meanwhile, so a later state write cannot drop its acks.
//
// Delivery ids (delivery.go) name partition, offset, attempt and epoch; an
// ack naming an older attempt or epoch is stale.
//
// # Bounds
//
// What one consumer can cost is capped (flow.go): credit is at most
// MaxCredit (10,000; more is refused); its queue — deliveries handed to
// it and not yet taken by its stream with Take — holds at most
// EngineOptions.QueueBytes (64 KiB), after which it gets nothing more, so
// a consumer that does not read costs at most its credit's worth of
// messages, and its subscription's other consumers get the rest. The
// stream reports what it took (an event), which makes room. A NONE
// subscription whose consumers have no room reads nothing; once what it
// buffered is more than noneMaxLag (5 s) old, it is dropped
// (Stats.Dropped, Engine.Dropped) and reading resumes at the head.
// Detach costs what the consumer held (Inflight indexes leases by
// consumer; retries merge in one pass), so thousands of consumers leaving
// at once do not hold up the loop.
package consumer
