// Package broker serves ferry's gRPC API over a storage.Store.
//
// A Server owns the store, the gRPC server (PublisherService, AdminService,
// the standard health service and reflection) and the HTTP server (/healthz,
// /readyz). Open binds both listeners and opens the store; Serve serves until
// Shutdown, which stops taking requests, lets in-flight writes finish,
// closes the store and returns.
//
// A publish flows: the gRPC handler validates the whole request (limits in
// limits.go) before anything is queued, routes each message to a partition
// (route.go), queues each partition's share with its writer in request
// order, and answers once every share is durable. PublishStream queues
// requests as they arrive and answers them in order from a second
// goroutine, so a client can keep many batches in flight.
//
// A Subscribe stream attaches a consumer (consumer.Engine) and runs two
// goroutines: one reads the client's frames, one sends deliveries, a frame
// at a time as the consumer's bounded queue has them, and ack
// confirmations. An effectively-once stream has at most maxPendingConfirms
// tokens of acks unconfirmed (confirmTokenIDs ids each); beyond, the
// reader waits, so a client that does
// not read its confirmations is held back by HTTP/2 flow control (a fixed
// window of streamWindowBytes a stream), not buffered for.
//
// Memory (memory.go): Options.MemoryLimit sizes the store
// (storage.Options.SizeFor). Each publish holds its bytes, from arrival
// until durable, out of a cap shared by all streams (a publish at the cap
// waits and its stream is not read meanwhile); near the limit publishes
// are delayed, then refused with RESOURCE_EXHAUSTED and a RetryInfo delay.
// A PublishStream batch refused for memory ends the stream with that status after the
// batches before it are answered, so that the client's retry keeps order;
// so does a batch refused at the disk reserve (RESOURCE_EXHAUSTED with a
// RetryInfo), once its turn to be answered comes.
//
// Errors from storage and validation become gRPC statuses in one place,
// toStatus in status.go.
package broker
