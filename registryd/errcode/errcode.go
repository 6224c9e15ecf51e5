// Package errcode declares every error code registryd answers with, each once
// with its HTTP status, and writes the distribution-spec JSON error envelope.
package errcode

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Code is one error code of the distribution-spec (or one of the few
// extensions distribution also uses), with the HTTP status it is sent with.
type Code struct {
	Name    string
	Message string
	Status  int
}

// The codes. They are values, not registrations in a mutable table: a handler
// names the code it means and the status comes with it.
var (
	BlobUnknown         = Code{"BLOB_UNKNOWN", "blob unknown to registry", http.StatusNotFound}
	BlobUploadInvalid   = Code{"BLOB_UPLOAD_INVALID", "blob upload invalid", http.StatusBadRequest}
	BlobUploadUnknown   = Code{"BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", http.StatusNotFound}
	DigestInvalid       = Code{"DIGEST_INVALID", "provided digest did not match uploaded content", http.StatusBadRequest}
	ManifestBlobUnknown = Code{"MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to registry", http.StatusBadRequest}
	ManifestInvalid     = Code{"MANIFEST_INVALID", "manifest invalid", http.StatusBadRequest}
	ManifestTooLarge    = Code{"MANIFEST_INVALID", "manifest too large", http.StatusRequestEntityTooLarge}
	ManifestUnknown     = Code{"MANIFEST_UNKNOWN", "manifest unknown to registry", http.StatusNotFound}
	NameInvalid         = Code{"NAME_INVALID", "invalid repository name", http.StatusBadRequest}
	NameUnknown         = Code{"NAME_UNKNOWN", "repository name not known to registry", http.StatusNotFound}
	SizeInvalid         = Code{"SIZE_INVALID", "provided length did not match content length", http.StatusBadRequest}
	TagInvalid          = Code{"TAG_INVALID", "invalid tag", http.StatusBadRequest}
	RangeInvalid        = Code{"RANGE_INVALID", "invalid content range", http.StatusRequestedRangeNotSatisfiable}
	PaginationInvalid   = Code{"PAGINATION_NUMBER_INVALID", "invalid number of results requested", http.StatusBadRequest}
	Unauthorized        = Code{"UNAUTHORIZED", "authentication required", http.StatusUnauthorized}
	Denied              = Code{"DENIED", "requested access to the resource is denied", http.StatusForbidden}
	Unsupported         = Code{"UNSUPPORTED", "the operation is unsupported", http.StatusMethodNotAllowed}
	TooManyRequests     = Code{"TOOMANYREQUESTS", "too many requests", http.StatusTooManyRequests}
	NotFound            = Code{"NOT_FOUND", "no route for this request", http.StatusNotFound}
	Unavailable         = Code{"UNAVAILABLE", "service unavailable, retry later", http.StatusServiceUnavailable}
	Unknown             = Code{"UNKNOWN", "unknown error", http.StatusInternalServerError}
	// RequestTimeout: a request body moved too slowly (registryd's own
	// code, like NOT_FOUND and UNAVAILABLE).
	RequestTimeout = Code{"REQUEST_TIMEOUT", "request body arrived too slowly", http.StatusRequestTimeout}
)

// Error is a Code with the detail of one occurrence and, optionally, the
// cause it wraps (kept for logs, never sent to the client).
type Error struct {
	Code   Code
	Detail any
	// RetryAfter, when non-zero, is sent as the Retry-After header (seconds).
	RetryAfter int
	// Header is added to the response, e.g. an auth challenge.
	Header http.Header
	Err    error
}

func (e *Error) Error() string {
	msg := e.Code.Name + ": " + e.Code.Message
	if e.Detail != nil {
		msg += fmt.Sprintf(" (%v)", e.Detail)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches any *Error with the same code name and status, so callers can
// write errors.Is(err, errcode.BlobUnknown.New()).
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// New returns an occurrence of c without detail.
func (c Code) New() *Error { return &Error{Code: c} }

// With returns an occurrence of c carrying detail for the client.
func (c Code) With(detail any) *Error { return &Error{Code: c, Detail: detail} }

// Wrap returns an occurrence of c caused by err.
func (c Code) Wrap(err error, detail any) *Error { return &Error{Code: c, Detail: detail, Err: err} }

type envelopeError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// Envelope is the body of every error response.
type Envelope struct {
	Errors []envelopeError `json:"errors"`
}

// As converts any error into an *Error: an *Error in the chain is used as is,
// anything else becomes UNKNOWN (500) wrapping it.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Unknown.Wrap(err, nil)
}

// Write sends err as the spec's JSON error envelope. HEAD responses get the
// status and headers only.
func Write(w http.ResponseWriter, r *http.Request, err error) *Error {
	e := As(err)
	body, _ := json.Marshal(Envelope{Errors: []envelopeError{{
		Code: e.Code.Name, Message: e.Code.Message, Detail: e.Detail,
	}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	for k, v := range e.Header {
		h[k] = v
	}
	w.WriteHeader(e.Code.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return e
}
