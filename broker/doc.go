// Package broker serves ferry's gRPC API over a storage.Store and a
// consumer.Engine, on one node or as one node of a cluster
// (docs/design.md has the whole design).
//
// # Model
//
// A Server owns the store, the delivery engine, in a cluster the node,
// the gRPC server and the HTTP server. Open (server.go) opens the store,
// binds the listeners, builds the interceptor chain and the three
// services, and in a cluster starts the node; Serve serves until
// Shutdown, which turns readiness off, hands off Raft leadership, stops
// taking requests, lets in-flight writes finish, stops the engine and
// closes the store.
//
//	publisher   PublisherService: Publish, PublishStream (publisher.go)
//	subscriber  SubscriberService: Subscribe, Ack, Nack, ModifyAckDeadline,
//	            Commit, Seek (subscriber.go), over the consumer.Engine
//	admin       AdminService: topics, subscriptions, ReadMessages, cluster
//	            status, clients (admin.go, cluster_status.go, clients.go)
//	health, reflection, and on the HTTP port /metrics, /healthz, /readyz
//	and, with --pprof, Go's profiles (http_auth.go)
//
// Every call passes the same interceptors, in order: metrics, per-client
// statistics (clients.go), a check that the request decodes (decode.go:
// INVALID_ARGUMENT, never INTERNAL), authentication and authorization
// (auth.go, auth_rpcs.go, over package auth), then the per-principal rate
// limits and quotas (quotas.go, connquota.go, internal/limits).
//
// # A publish
//
// The handler validates the whole request (limits.go) before anything is
// queued, routes each message to a partition (route.go: explicit, else
// hash of the key, else of the id, else round-robin), holds its bytes in
// the memory budget (memory.go), queues each partition's share with the
// partition's writer (storage.Store.Enqueue) in request order, and answers
// once every share is durable. PublishStream queues requests as they
// arrive and answers them in order from a second goroutine, so a client
// can keep many batches in flight. docs/design.md §6 walks it down to the
// fsync.
//
// # A subscription
//
// The engine (consumer.Engine) runs each subscription's delivery; the
// broker gives it a consumer.Log — the store, or in a cluster clusterLog
// — and turns streams and calls into engine calls. A Subscribe stream
// attaches a consumer.Consumer and runs two goroutines: one reads the
// client's frames (credit, ack, nack, extend), one sends deliveries, a
// frame of at most maxDeliveriesFrame bytes at a time as the consumer's
// bounded queue has them, and ack confirmations. Delivery ids go out
// sealed (consumer.IDSeal) and are checked on the way back, per id. An
// effectively-once stream has at most maxPendingConfirms tokens of acks
// unconfirmed (confirmTokenIDs ids each); beyond, the reader waits, so a
// client that does not read its confirmations is held back by HTTP/2
// flow control (a fixed window of streamWindowBytes a stream), not
// buffered for. Commit routes its publishes like a publish and hands
// them, with its acks, to the engine as one write. docs/design.md §7
// walks a delivery from the engine to the ack.
//
// # Cluster
//
// With Options.Cluster the Server is one node of a cluster (cluster.go):
// a cluster.Node runs the Raft groups (metadata, one per partition),
// placement, barriers and ownership; the node-to-node port serves the
// Raft transport and this package's services too. Topic changes go
// through the Node (topicAdmin), subscription changes and cursor loads
// through clusterLog. Each subscription runs on one node, its owner;
// other nodes forward subscriber calls and proxy Subscribe streams to it,
// and when ownership moves the engine releases the subscription, ending
// its streams with UNAVAILABLE. See docs/cluster.md.
//
// # Memory and disk
//
// Options.MemoryLimit sizes the store (storage.Options.SizeFor). Each
// publish holds its bytes, from arrival until durable, out of a cap
// shared by all streams (a publish at the cap waits and its stream is not
// read meanwhile); near the limit publishes are delayed, then refused
// with RESOURCE_EXHAUSTED and a RetryInfo delay. A PublishStream batch
// refused for memory ends the stream with that status after the batches
// before it are answered, so that the client's retry keeps order; so does
// a batch refused at the disk reserve (RESOURCE_EXHAUSTED with a
// RetryInfo), once its turn to be answered comes.
//
// # Errors
//
// Errors from storage, consumer, cluster, auth and validation become gRPC
// statuses in one place, toStatus in status.go; an "over a limit" answer
// is exhaustedf's RESOURCE_EXHAUSTED with a RetryInfo delay. Status
// messages say what to do and quote at most a bounded part of the request
// (internal/echo).
package broker
