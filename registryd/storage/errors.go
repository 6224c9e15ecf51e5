package storage

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
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
	case gcerrors.ResourceExhausted, gcerrors.DeadlineExceeded:
		return fmt.Errorf("%s: %w: %w", key, ErrUnavailable, err)
	case gcerrors.Internal, gcerrors.Unknown:
		// The drivers call most service errors Unknown; the HTTP status
		// tells a transient failure from a permanent one.
		if transient(err) {
			return fmt.Errorf("%s: %w: %w", key, ErrUnavailable, err)
		}
	}
	return fmt.Errorf("%s: %w", key, err)
}

// transient reports whether a backend error is worth retrying: no HTTP
// answer at all (refused, reset, timed out), a 5xx, 408 or 429 (throttling:
// S3's 503 SlowDown, Azure's 503 ServerBusy, GCS's 429).
func transient(err error) bool {
	status := 0
	var aws interface{ HTTPStatusCode() int }
	var az *azcore.ResponseError
	var gcs *googleapi.Error
	switch {
	case errors.As(err, &aws):
		status = aws.HTTPStatusCode()
	case errors.As(err, &az):
		status = az.StatusCode
	case errors.As(err, &gcs):
		status = gcs.Code
	}
	switch {
	case status == 0:
		return true
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return true
	}
	return directoryRace(err)
}

// directoryRace: a backend that keeps objects as files (versitygw's posix
// backend) removes a directory a delete left empty, and a PUT creating a
// key under it at that moment answers 409 ExistingObjectIsDirectory. The
// same PUT a moment later succeeds: the client gets 503 and retries.
func directoryRace(err error) bool {
	var api interface{ ErrorCode() string }
	return errors.As(err, &api) && api.ErrorCode() == "ExistingObjectIsDirectory"
}
