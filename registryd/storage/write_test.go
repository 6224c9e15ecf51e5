package storage

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"
)

// TestWriteSmallRetriesDirectoryRace: a small write (an upload's marker by
// WriteSmall; a link or a tag by WriteSmallDurable) that lost versitygw's
// directory race (409 ExistingObjectIsDirectory) is tried again and lands;
// a third loss in a row, or any other 409, goes back to the caller as
// before (a 503 to retry, or the refusal itself).
func TestWriteSmallRetriesDirectoryRace(t *testing.T) {
	writes := []struct {
		name  string
		write func(b *blob.Bucket) error
	}{
		{"WriteSmall", func(b *blob.Bucket) error {
			return WriteSmall(context.Background(), b, "uploads/u1/startedat", []byte("now"), nil)
		}},
		{"WriteSmallDurable", func(b *blob.Bucket) error {
			return WriteSmallDurable(context.Background(), NewSmallReader(b), "uploads/u1/startedat", []byte("now"), nil)
		}},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) { testDirectoryRace(t, w.write) })
	}
}

func testDirectoryRace(t *testing.T, write func(b *blob.Bucket) error) {
	for _, tt := range []struct {
		name        string
		code        string
		losses      int
		wantTries   int
		wantWritten bool
		wantErr     error
	}{
		{"no race", "ExistingObjectIsDirectory", 0, 1, true, nil},
		{"lost once", "ExistingObjectIsDirectory", 1, 2, true, nil},
		{"lost twice", "ExistingObjectIsDirectory", 2, 3, true, nil},
		{"lost three times", "ExistingObjectIsDirectory", 3, 3, false, ErrUnavailable},
		{"another 409", "BucketAlreadyExists", 1, 1, false, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &racyBucket{code: tt.code, losses: tt.losses, stored: map[string][]byte{}}
			b := blob.NewBucket(d)
			defer b.Close()
			err := write(b)
			if d.tries != tt.wantTries {
				t.Errorf("tries = %d, want %d", d.tries, tt.wantTries)
			}
			if got := d.stored["uploads/u1/startedat"]; tt.wantWritten != bytes.Equal(got, []byte("now")) {
				t.Errorf("stored %q, want written: %v", got, tt.wantWritten)
			}
			switch {
			case tt.wantWritten && err != nil:
				t.Fatalf("WriteSmall: %v", err)
			case !tt.wantWritten && err == nil:
				t.Fatal("WriteSmall succeeded, want an error")
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("WriteSmall: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// racyBucket answers its first losses writes with an S3 409 of code, as
// versitygw's posix backend does, and keeps the writes after them. Only
// writes are served.
type racyBucket struct {
	driver.Bucket
	code          string
	losses, tries int
	stored        map[string][]byte
}

func (*racyBucket) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Unknown }
func (*racyBucket) As(any) bool                        { return false }
func (*racyBucket) ErrorAs(error, any) bool            { return false }
func (*racyBucket) Close() error                       { return nil }

func (r *racyBucket) NewTypedWriter(_ context.Context, key, _ string, _ *driver.WriterOptions) (driver.Writer, error) {
	return &racyWriter{bucket: r, key: key}, nil
}

type racyWriter struct {
	bucket *racyBucket
	key    string
	buf    bytes.Buffer
}

func (w *racyWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }

func (w *racyWriter) Close() error {
	r := w.bucket
	r.tries++
	if r.tries <= r.losses {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: http.StatusConflict}},
			Err:      &smithy.GenericAPIError{Code: r.code, Message: "directory object already exists"}}}
	}
	r.stored[w.key] = w.buf.Bytes()
	return nil
}
