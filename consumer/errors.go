package consumer

import "errors"

var (
	// ErrCorrupt is returned when stored consumer state cannot be decoded.
	ErrCorrupt = errors.New("consumer: corrupt state")
	// ErrInvalidOptions is returned, wrapped with the field at fault, when
	// subscription options or a start position are not acceptable.
	ErrInvalidOptions = errors.New("consumer: invalid options")
)
