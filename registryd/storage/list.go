package storage

import (
	"context"
	"errors"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// listRetries bounds how often in a row Each resumes a listing that a
// concurrent delete broke before it got any further.
const listRetries = 64

// Each calls f for every object under opts, in key order, until f returns
// false or an error. fileblob fails a whole listing with NotFound when a
// file disappears between its directory read and its stat, which a
// concurrent delete (an untag, a finished upload) does at any moment; Each
// then lists again and resumes after the last key it passed to f, so a
// listing never fails, nor skips a key that stayed, because another key
// went away.
func Each(ctx context.Context, b *blob.Bucket, opts *blob.ListOptions, f func(*blob.ListObject) (bool, error)) error {
	last := ""
	for stalled := 0; ; stalled++ {
		it := b.List(opts)
		for {
			obj, err := it.Next(ctx)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if gcerrors.Code(err) == gcerrors.NotFound && stalled < listRetries && ctx.Err() == nil {
				break // list again, resuming after last
			}
			if err != nil {
				return classify(err, opts.Prefix)
			}
			if last != "" && obj.Key <= last {
				continue
			}
			last, stalled = obj.Key, 0
			more, err := f(obj)
			if err != nil || !more {
				return err
			}
		}
	}
}

// ListStart asks a driver this package does not import to begin a listing
// after the key prefix+after, prefix being the listing's own; drivers it
// does not know it leaves alone. internal/bucket.ListStart is the one for GCS
// (StartOffset): its client is about 460 packages, which everything that
// imports this package (the server's fuzz target among them) would build
// too if the GCS case were written here.
type ListStart func(as func(any) bool, after string)

// StartAfter is a ListOptions.BeforeList that asks the backend to begin the
// listing after key prefix+after, where prefix is the listing's own, so a
// page of tags far into a repository does not list every tag before it:
// S3 (StartAfter) here, others through more (nil: none). Drivers without
// one list from the start; callers still skip keys <= after themselves.
func StartAfter(after string, more ListStart) func(as func(any) bool) error {
	return func(as func(any) bool) error {
		var s3in *s3.ListObjectsV2Input
		if as(&s3in) && s3in != nil {
			s3in.StartAfter = aws.String(aws.ToString(s3in.Prefix) + after)
			return nil
		}
		if more != nil {
			more(as, after)
		}
		return nil
	}
}
