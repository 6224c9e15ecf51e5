// Package bucket opens the object storage a Registry names, for both the
// operator (storage probe, repository deletion) and registryd.
package bucket

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/aws/smithy-go"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file:// buckets
	_ "gocloud.dev/blob/memblob"  // mem:// buckets
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"
)

// Options refine how a bucket is opened.
type Options struct {
	// Prefix scopes every key, so several registries can share a bucket.
	Prefix string
	// Env holds credentials as the drivers' environment variables
	// (AWS_*, AZURE_STORAGE_*, GOOGLE_APPLICATION_CREDENTIALS,
	// STORAGE_EMULATOR_HOST) for callers that are not the pod itself, such
	// as the operator's probe. When non-empty it is the whole environment
	// the cloud drivers see; when empty they read the process's own.
	// file:// and mem:// need no credentials.
	Env map[string]string
	// Isolated makes Env the only source of credentials even when it is
	// empty: never the process's environment, nor the cloud SDKs' default
	// chains (instance roles, IRSA and workload identity, Application
	// Default Credentials, DefaultAzureCredential, shared config files).
	// The operator opens every Registry's bucket so, and so never lends its
	// own identity to whoever may create a Registry.
	Isolated bool
	// DialControl, when set, vets every connection the cloud clients open
	// (net.Dialer.Control): the operator's endpoint policy (DialPolicy).
	DialControl func(network, address string, c syscall.RawConn) error
}

// Open opens a gocloud.dev blob URL, creating a file:// directory when it is
// missing, and scopes it to opts.Prefix when one is given.
func Open(ctx context.Context, rawURL string, opts Options) (*blob.Bucket, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("storage URL: %w", err)
	}
	if u.Scheme == "file" {
		// fileblob's temp files go to TMPDIR, which in a pod is inside the
		// bucket's volume (so the rename into place stays on one mount) and
		// may not exist yet.
		for _, dir := range []string{u.Path, os.TempDir()} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("storage URL %s: %w", redact(u), err)
			}
		}
	}
	var b *blob.Bucket
	switch u.Scheme {
	case "s3":
		b, err = openS3(ctx, u, opts)
	case "azblob":
		b, err = openAzure(ctx, u, opts)
	case "gs":
		b, err = openGCS(ctx, u, opts)
	default:
		b, err = blob.OpenBucket(ctx, rawURL)
	}
	if err != nil {
		return nil, fmt.Errorf("opening storage %s: %w", redact(u), err)
	}
	if opts.Prefix != "" {
		b = blob.PrefixedBucket(b, opts.Prefix)
	}
	return b, nil
}

// redact drops credentials a URL may carry, so errors can be logged and put
// into conditions.
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	q := c.Query()
	for k := range q {
		switch k {
		case "access_key_id", "secret_access_key", "session_token", "sas_token", "key":
			q.Set(k, "REDACTED")
		}
	}
	c.RawQuery = q.Encode()
	return c.String()
}

// probeKey is the one object Probe writes, under a prefix of its own so it
// never collides with registry content. Always the same key: a probe's error
// then reads the same on every attempt, and a Registry's status does not
// change (and is not written) while the bucket keeps failing the same way.
const probeKey = "_stevedore/probe/operator"

// ProbeError is a failed step of Probe. Its text is stable from one attempt
// to the next: no request IDs, no timestamps.
type ProbeError struct {
	// Step is write, read, compare or delete.
	Step string
	Err  error
}

func (e *ProbeError) Error() string {
	return e.Step + " of the probe object failed: " + Describe(e.Err)
}
func (e *ProbeError) Unwrap() error { return e.Err }

// Probe writes, reads back and deletes a small object, proving the bucket is
// usable with the credentials at hand.
func Probe(ctx context.Context, b *blob.Bucket) error {
	want := []byte("stevedore storage probe")
	// Upload, not WriteAll: azureblob's Write path panics when the upload
	// fails (gocloud v0.47.0), and failing is what a probe is for.
	if err := b.Upload(ctx, probeKey, bytes.NewReader(want), &blob.WriterOptions{ContentType: "text/plain"}); err != nil {
		return &ProbeError{Step: "write", Err: err}
	}
	got, err := b.ReadAll(ctx, probeKey)
	if err != nil {
		return errors.Join(&ProbeError{Step: "read", Err: err}, b.Delete(ctx, probeKey))
	}
	if !bytes.Equal(got, want) {
		return errors.Join(&ProbeError{Step: "compare", Err: fmt.Errorf("read %d bytes that differ from what was written", len(got))},
			b.Delete(ctx, probeKey))
	}
	if err := b.Delete(ctx, probeKey); err != nil {
		return &ProbeError{Step: "delete", Err: err}
	}
	return nil
}

// Describe says what went wrong with a bucket operation in words that stay
// the same while the cause does: the backend's error code and message,
// without the request IDs, host IDs and retry counts the SDKs' own texts
// carry, so it can go into a status condition without making every attempt
// a change.
func Describe(err error) string {
	var aws smithy.APIError
	if errors.As(err, &aws) {
		return fmt.Sprintf("%s: %s (code=%v)", aws.ErrorCode(), aws.ErrorMessage(), gcerrors.Code(err))
	}
	var az *azcore.ResponseError
	if errors.As(err, &az) {
		return fmt.Sprintf("HTTP %d %s (code=%v)", az.StatusCode, az.ErrorCode, gcerrors.Code(err))
	}
	var g *googleapi.Error
	if errors.As(err, &g) {
		return fmt.Sprintf("HTTP %d %s (code=%v)", g.Code, g.Message, gcerrors.Code(err))
	}
	return err.Error()
}

// DeletePrefixes deletes every object under the given prefixes and returns
// how many it deleted.
func DeletePrefixes(ctx context.Context, b *blob.Bucket, prefixes []string) (int, error) {
	n := 0
	for _, p := range prefixes {
		it := b.List(&blob.ListOptions{Prefix: p})
		for {
			obj, err := it.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("listing %s: %w", p, err)
			}
			if err := b.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return n, fmt.Errorf("deleting %s: %w", obj.Key, err)
			}
			n++
		}
	}
	return n, nil
}
