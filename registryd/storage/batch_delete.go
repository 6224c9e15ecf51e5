package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"gocloud.dev/blob"
)

// MaxBatchDelete is the most keys one S3 DeleteObjects request takes.
const MaxBatchDelete = 1000

// BatchDeleter deletes many keys per request where the backend has such a
// request (S3's DeleteObjects: up to 1,000 keys); gocloud.dev/blob has
// none, and a collector sending one DELETE per key spends its time on
// requests, not on work (docs/gc.md, "Cost").
type BatchDeleter struct {
	client *s3.Client
	bucket string
	prefix string // the PrefixedBucket's prefix, if any
}

// NewBatchDeleter returns a BatchDeleter for b, or nil when b's backend
// has no batch delete. The S3 bucket's name and any prefix the
// *blob.Bucket adds are not exposed by gocloud; one empty listing, whose
// request they are written into, reveals them.
func NewBatchDeleter(ctx context.Context, b *blob.Bucket) (*BatchDeleter, error) {
	var client *s3.Client
	if !b.As(&client) {
		return nil, nil
	}
	const probe = "_stevedore/gc/batch-delete-probe/"
	d := &BatchDeleter{client: client}
	found := false
	it := b.List(&blob.ListOptions{Prefix: probe, BeforeList: func(as func(any) bool) error {
		var in *s3.ListObjectsV2Input
		if as(&in) && in != nil {
			d.bucket = aws.ToString(in.Bucket)
			p, ok := strings.CutSuffix(aws.ToString(in.Prefix), probe)
			d.prefix, found = p, ok && d.bucket != ""
		}
		return nil
	}})
	if _, err := it.Next(ctx); err != nil && !errors.Is(err, io.EOF) {
		return nil, classify(err, probe)
	}
	if !found {
		return nil, nil
	}
	return d, nil
}

// Batchable reports whether key may go in a batch: the key as gocloud
// would send it is the key itself (s3blob escapes a few patterns).
func Batchable(key string) bool {
	return plainKey(key) && !strings.Contains(key, "__0x")
}

// Delete deletes keys (at most MaxBatchDelete, each Batchable) in one
// request. A missing key is not an error (S3 does not say which were
// there).
func (d *BatchDeleter) Delete(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > MaxBatchDelete {
		return fmt.Errorf("batch delete of %d keys: at most %d", len(keys), MaxBatchDelete)
	}
	objs := make([]types.ObjectIdentifier, len(keys))
	for i, k := range keys {
		objs[i] = types.ObjectIdentifier{Key: aws.String(d.prefix + k)}
	}
	out, err := d.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(d.bucket),
		Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)}})
	if err != nil {
		return fmt.Errorf("deleting %d objects: %w", len(keys), err)
	}
	for _, e := range out.Errors {
		if aws.ToString(e.Code) == "NoSuchKey" {
			continue
		}
		return fmt.Errorf("deleting %s: %s: %s", strings.TrimPrefix(aws.ToString(e.Key), d.prefix), aws.ToString(e.Code), aws.ToString(e.Message))
	}
	return nil
}
