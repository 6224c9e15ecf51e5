package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

var errBackendDown = errors.New("backend down")

// downBucket is a driver whose every call fails as an overloaded backend
// would.
type downBucket struct{}

func (downBucket) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Internal }
func (downBucket) As(any) bool                        { return false }
func (downBucket) ErrorAs(error, any) bool            { return false }
func (downBucket) Attributes(context.Context, string) (*driver.Attributes, error) {
	return nil, errBackendDown
}
func (downBucket) ListPaged(context.Context, *driver.ListOptions) (*driver.ListPage, error) {
	return nil, errBackendDown
}
func (downBucket) NewRangeReader(context.Context, string, int64, int64, *driver.ReaderOptions) (driver.Reader, error) {
	return nil, errBackendDown
}
func (downBucket) NewTypedWriter(context.Context, string, string, *driver.WriterOptions) (driver.Writer, error) {
	return nil, errBackendDown
}
func (downBucket) Copy(context.Context, string, string, *driver.CopyOptions) error {
	return errBackendDown
}
func (downBucket) Delete(context.Context, string, *driver.DeleteOptions) error { return errBackendDown }
func (downBucket) SignedURL(context.Context, string, *driver.SignedURLOptions) (string, error) {
	return "", errBackendDown
}
func (downBucket) Close() error { return nil }

// TestStorageDownIs503: a failing backend is a retryable 503 with
// Retry-After on every kind of request, never a 500.
func TestStorageDownIs503(t *testing.T) {
	b := blob.NewBucket(downBucket{})
	srv := httptest.NewServer(New(b, tags.NewBucket(b), &Options{Logger: slog.New(slog.DiscardHandler)}))
	t.Cleanup(srv.Close)
	r := &testRegistry{t: t, bucket: b, url: srv.URL}
	const d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	requests := []struct{ method, path string }{
		{"GET", "/v2/app/blobs/" + d},
		{"GET", "/v2/app/manifests/latest"},
		{"GET", "/v2/app/manifests/" + d},
		{"PUT", "/v2/app/manifests/latest"},
		{"POST", "/v2/app/blobs/uploads/"},
		{"POST", "/v2/app/blobs/uploads/?digest=" + d},
		{"GET", "/v2/app/tags/list"},
		{"GET", "/v2/app/referrers/" + d},
		{"GET", "/v2/_catalog"},
		{"DELETE", "/v2/app/blobs/" + d},
	}
	for _, req := range requests {
		t.Run(req.method+" "+req.path, func(t *testing.T) {
			var body []byte
			if req.method == "PUT" {
				body = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
			}
			resp := r.do(req.method, req.path, body, "Content-Type", "application/vnd.oci.image.index.v1+json")
			r.expect(resp, 503, "UNAVAILABLE")
			if resp.header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
		})
	}
}
