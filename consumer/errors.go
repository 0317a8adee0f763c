package consumer

import "errors"

var (
	// ErrCorrupt is returned when stored consumer state cannot be decoded.
	ErrCorrupt = errors.New("consumer: corrupt state")
	// ErrInvalidOptions is returned, wrapped with the field at fault, when
	// subscription options or a start position are not acceptable.
	ErrInvalidOptions = errors.New("consumer: invalid options")
	// ErrInvalidCredit is returned by Attach and SetCredit for a credit
	// outside 1 to MaxCredit.
	ErrInvalidCredit = errors.New("consumer: invalid credit")
	// ErrExclusiveBusy is returned by Attach when an EXCLUSIVE subscription
	// already has its consumer.
	ErrExclusiveBusy = errors.New("consumer: exclusive subscription already has a consumer")
	// ErrStaleAttempt is returned for an ack, nack, extend or commit that
	// names a superseded attempt of an EFFECTIVELY_ONCE delivery (or a
	// delivery made before a seek): the message was redelivered since and
	// the caller's attempt no longer counts. Nothing is changed.
	ErrStaleAttempt = errors.New("consumer: stale attempt")
	// ErrAlreadyAcked is returned for an ack or commit of a message that is
	// already acked.
	ErrAlreadyAcked = errors.New("consumer: already acked")
	// ErrUnknownDelivery is returned for a delivery id that names no
	// outstanding delivery: never made, from another broker life, or
	// being committed.
	ErrUnknownDelivery = errors.New("consumer: unknown delivery")
	// ErrMalformedDelivery is returned by IDSeal.Open for a delivery id
	// that is not of the form the broker hands out.
	ErrMalformedDelivery = errors.New("consumer: malformed delivery id")
	// ErrForeignDelivery is returned by IDSeal.Open for a delivery id
	// whose check value fails: made by another subscription (or an earlier
	// one of the same name), for another topic, or altered. Nothing is
	// changed.
	ErrForeignDelivery = errors.New("consumer: delivery id not issued by this subscription")
	// ErrNotSupported is returned for a call the subscription's guarantee
	// does not take, such as Commit on AT_MOST_ONCE.
	ErrNotSupported = errors.New("consumer: not supported by the subscription's guarantee")
	// ErrSubscriptionNotFound is returned when a topic has no subscription
	// of the given name.
	ErrSubscriptionNotFound = errors.New("consumer: subscription not found")
	// ErrSubscriptionExists is returned by CreateSubscription when the name
	// is taken with a different config.
	ErrSubscriptionExists = errors.New("consumer: subscription exists with a different config")
	// ErrDetached is returned to a consumer removed from its subscription:
	// the subscription was deleted or seeked past it, or the engine closed.
	ErrDetached = errors.New("consumer: detached")
)
