// Package consumer is ferry's delivery engine: it decides which message goes
// to which consumer of a subscription, tracks what is outstanding, and keeps
// each subscription's promise (DESIGN §2). It knows nothing of gRPC and reads
// time from an injected clock.
//
// What is here so far is its vocabulary and its two core structures:
//
//   - Guarantee, Type, Options (with DefaultOptions and Validate) and
//     StartPosition: what a subscription is configured with, parsed from
//     the CLI's names, and the nack Backoff schedule.
//   - Cursor, a subscription's position in a partition: an ack floor plus
//     the offsets acked out of order above it, with a compact encoding for
//     storing it through the partition's writer, in the same group commit as
//     the messages.
//   - Inflight, the outstanding deliveries of a subscription in a partition,
//     ordered by deadline, so the engine can find what is due for redelivery.
package consumer
