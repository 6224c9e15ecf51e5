package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/reference"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

func writeJSON(w http.ResponseWriter, r *http.Request, status int, contentType string, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// storageErr turns an error of the lower layers into the spec error a
// client should see; notFound is the code for a missing object.
func storageErr(err error, notFound errcode.Code, detail any) error {
	var e *errcode.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return err
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, tags.ErrNotFound), errors.Is(err, mirror.ErrUpstreamNotFound):
		return notFound.Wrap(err, detail)
	case errors.Is(err, storage.ErrDigestMismatch), errors.Is(err, uploads.ErrDigestMismatch):
		return errcode.DigestInvalid.Wrap(err, detail)
	case errors.Is(err, storage.ErrSizeMismatch), errors.Is(err, uploads.ErrSizeMismatch),
		errors.Is(err, io.ErrUnexpectedEOF):
		return errcode.SizeInvalid.Wrap(err, detail)
	case errors.Is(err, uploads.ErrOutOfOrder):
		return errcode.RangeInvalid.Wrap(err, detail)
	case errors.Is(err, uploads.ErrUnknown):
		return errcode.BlobUploadUnknown.Wrap(err, detail)
	case errors.Is(err, uploads.ErrInvalidToken):
		return errcode.BlobUploadInvalid.Wrap(err, detail)
	case errors.Is(err, mirror.ErrUpstreamUnavailable):
		// Not worth a retry here: containerd goes on to the next host.
		return errcode.Unavailable.Wrap(err, "the upstream registry did not answer")
	case errors.Is(err, storage.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &errcode.Error{Code: errcode.Unavailable, RetryAfter: 1, Err: err}
	}
	return errcode.Unknown.Wrap(err, nil)
}

// parseDigest validates a digest from a URL or query.
func parseDigest(s string) (digest.Digest, error) {
	d, err := reference.ParseDigest(s)
	if err != nil {
		return "", errcode.DigestInvalid.Wrap(err, s)
	}
	return d, nil
}

func specsVersioned() specs.Versioned { return specs.Versioned{SchemaVersion: 2} }
