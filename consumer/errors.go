package consumer

import "errors"

// ErrCorrupt is returned when stored consumer state cannot be decoded.
var ErrCorrupt = errors.New("consumer: corrupt state")
