package storage

import (
	"errors"
	"fmt"

	"gocloud.dev/gcerrors"
)

// Errors of this package; match with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: streamed content did not hash to the expected digest.
	ErrDigestMismatch = errors.New("content does not match digest")
	// ErrSizeMismatch: streamed content did not have the announced length.
	ErrSizeMismatch = errors.New("content does not match size")
	// ErrExists: a conditional write found the key already written.
	ErrExists = errors.New("already exists")
	// ErrUnsupported: the backend lacks an optional capability.
	ErrUnsupported = errors.New("not supported by this storage backend")
	// ErrUnavailable: the backend failed in a way worth retrying.
	ErrUnavailable = errors.New("storage unavailable")
)

// Classify maps a gocloud error about key onto this package's errors, for
// the packages (tags, uploads) that use the bucket directly.
func Classify(err error, key string) error { return classify(err, key) }

// classify maps a gocloud error onto this package's errors so callers never
// see driver types.
func classify(err error, key string) error {
	if err == nil {
		return nil
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound:
		return fmt.Errorf("%s: %w", key, ErrNotFound)
	case gcerrors.FailedPrecondition:
		return fmt.Errorf("%s: %w", key, ErrExists)
	case gcerrors.Canceled:
		return fmt.Errorf("%s: %w", key, err)
	case gcerrors.ResourceExhausted, gcerrors.DeadlineExceeded, gcerrors.Internal, gcerrors.Unknown:
		return fmt.Errorf("%s: %w: %w", key, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", key, err)
}
