package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// Store is the registry's view of one bucket. It holds no other state
// than caches that never go stale (manifest_cache.go), so any number of
// Stores (in any number of processes) may share a bucket.
type Store struct {
	bucket    *blob.Bucket
	manifests *lru[[]byte]       // content by digest
	links     *lru[manifestLink] // manifest links by key, checked against the bucket
	// beforeSign adjusts signed URLs for the backend (the GCS emulator's
	// host); nil for most.
	beforeSign func(asFunc func(any) bool) error
	// listStart starts listings after a key on drivers beyond S3
	// (StartAfter); nil for most.
	listStart ListStart
	// local makes writes durable on a local directory (durable.go).
	local *SmallReader
	// copyBufs holds the buffers blobs from a remote object store are
	// copied to clients through (remoteReader).
	copyBufs sync.Pool
}

// New returns a Store over bucket. The caller keeps ownership of bucket.
func New(bucket *blob.Bucket) *Store {
	return &Store{bucket: bucket, manifests: newLRU[[]byte](manifestCacheBytes), links: newLRU[manifestLink](linkCacheEntries),
		local: NewSmallReader(bucket)}
}

// WithBeforeSign sets the hook SignedURL passes to the driver
// (internal/bucket.BeforeSign) and returns s.
func (s *Store) WithBeforeSign(f func(asFunc func(any) bool) error) *Store {
	s.beforeSign = f
	return s
}

// WithListStart sets the hook catalog listings start after a key with on
// drivers this package does not import (internal/bucket.ListStart) and
// returns s.
func (s *Store) WithListStart(f ListStart) *Store {
	s.listStart = f
	return s
}

// Bucket is the underlying bucket, for the upload and tag packages that
// share the layout.
func (s *Store) Bucket() *blob.Bucket { return s.bucket }

// Local is the store's SmallReader, for CreateSmall and the durable writes.
func (s *Store) Local() *SmallReader { return s.local }

// Ping checks the bucket answers, for /readyz.
func (s *Store) Ping(ctx context.Context) error {
	// A listing, not a HEAD: a HEAD of a missing key answers the same for a
	// missing bucket, a listing says NotFound. Under registryd's own prefix
	// and one key long, so it costs the same on a full bucket.
	_, _, err := s.bucket.ListPage(ctx, blob.FirstPageToken, 1, &blob.ListOptions{Prefix: "_stevedore/probe/"})
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("the bucket does not exist: %w", err)
	}
	return classify(err, "ping")
}

// Exists reports whether key is in the bucket (on a local directory, with
// one stat: SmallReader.Attributes).
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	_, err := s.local.Attributes(ctx, key)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

func (s *Store) readAll(ctx context.Context, key string, limit int64) ([]byte, error) {
	r, err := s.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return nil, classify(err, key)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit))
	return b, classify(err, key)
}

func (s *Store) writeSmall(ctx context.Context, key string, content []byte, contentType string) error {
	return WriteSmallDurable(ctx, s.local, key, content, &blob.WriterOptions{ContentType: contentType})
}

func (s *Store) delete(ctx context.Context, key string) error {
	return classify(s.bucket.Delete(ctx, key), key)
}

// listNames lists the last path element of every object (or, with dirs, of
// every "directory") directly under prefix, in lexical order.
func (s *Store) listNames(ctx context.Context, prefix string, dirs bool) ([]string, error) {
	var names []string
	err := Each(ctx, s.bucket, &blob.ListOptions{Prefix: prefix, Delimiter: "/"}, func(obj *blob.ListObject) (bool, error) {
		if obj.IsDir == dirs {
			names = append(names, strings.TrimSuffix(strings.TrimPrefix(obj.Key, prefix), "/"))
		}
		return true, nil
	})
	return names, err
}

// deletePrefix removes every object under prefix; used to cancel uploads.
func (s *Store) deletePrefix(ctx context.Context, prefix string) error {
	return Each(ctx, s.bucket, &blob.ListOptions{Prefix: prefix}, func(obj *blob.ListObject) (bool, error) {
		if err := s.delete(ctx, obj.Key); err != nil && !errors.Is(err, ErrNotFound) {
			return false, err
		}
		return true, nil
	})
}

// listKeys returns the keys of the objects under prefix, at most limit of
// them (0: all), in lexical order.
func (s *Store) listKeys(ctx context.Context, prefix string, limit int) ([]string, error) {
	var keys []string
	err := Each(ctx, s.bucket, &blob.ListOptions{Prefix: prefix}, func(obj *blob.ListObject) (bool, error) {
		if !obj.IsDir {
			keys = append(keys, obj.Key)
		}
		return limit <= 0 || len(keys) < limit, nil
	})
	return keys, err
}
