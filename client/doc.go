// Package client is ferry's Go SDK: a Producer that batches, pipelines and
// retries publishes without ever storing one twice, a consumer (Subscribe)
// that manages credit, ack deadlines and reconnects, Process for
// effectively-once consume→transform→produce pipelines built on Commit,
// and admin calls for topics and subscriptions.
//
// It depends only on the wire API (package ferryv1) and gRPC.
//
// # Model
//
// A Client is one gRPC connection. A Producer publishes to one topic over
// one PublishStream: PublishAsync queues a message (every message gets a
// UUIDv7 id unless it has one), a batcher groups queued messages by count,
// bytes and linger, and sends batches pipelined; a receiver resolves each
// message's PublishFuture from the answers, in order. Bytes not yet answered
// are capped (ProducerOptions.MaxInflightBytes): PublishAsync blocks at the
// cap. When the stream breaks or the broker answers UNAVAILABLE, every
// unanswered batch is sent again, in order, with the same ids: the broker
// answers a message it already stored as a duplicate, so a retry is never
// stored twice and per-key order holds.
//
// Subscribe attaches to a subscription and runs a handler on each message
// with bounded concurrency; credit equals what the handlers can hold, so
// the broker never sends more than they can take. A handler's nil error
// acks, an error or a panic nacks. While a handler runs its deadline is
// extended every third of the ack timeout, up to MaxExtension. When the
// stream breaks, Subscribe reconnects with exponential backoff and jitter;
// handlers already running finish and ack over the new stream. When ctx
// ends it stops taking messages, lets running handlers finish (up to
// DrainTimeout), sends their acks and returns nil.
package client
