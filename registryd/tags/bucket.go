package tags

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Bucket keeps each tag as the object repos/<name>/_tags/<tag> holding the
// target's descriptor JSON. It is the standalone tag store and, in cluster
// mode, the journal written before the Repository status.
type Bucket struct {
	bucket *blob.Bucket
	reader *storage.SmallReader // tag reads: straight from the file on file://
}

// NewBucket returns the bucket tag store over b.
func NewBucket(b *blob.Bucket) *Bucket { return &Bucket{bucket: b, reader: storage.NewSmallReader(b)} }

var _ Store = (*Bucket)(nil)

func (s *Bucket) Get(ctx context.Context, repo, tag string) (ocispec.Descriptor, error) {
	b, err := s.reader.ReadAll(ctx, storage.TagKey(repo, tag))
	if errors.Is(err, storage.ErrNotFound) {
		return ocispec.Descriptor{}, fmt.Errorf("%s:%s: %w", repo, tag, ErrNotFound)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading tag %s:%s: %w", repo, tag, err)
	}
	var desc ocispec.Descriptor
	if err := json.Unmarshal(b, &desc); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("corrupt tag %s:%s: %w", repo, tag, err)
	}
	return desc, nil
}

func (s *Bucket) Put(ctx context.Context, repo, tag string, desc ocispec.Descriptor) error {
	b, err := json.Marshal(ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
	if err != nil {
		return err
	}
	if err := storage.WriteSmallDurable(ctx, s.reader, storage.TagKey(repo, tag), b, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		return fmt.Errorf("writing tag %s:%s: %w", repo, tag, err)
	}
	return nil
}

func (s *Bucket) Delete(ctx context.Context, repo, tag string) error {
	err := s.bucket.Delete(ctx, storage.TagKey(repo, tag))
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("%s:%s: %w", repo, tag, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("deleting tag %s:%s: %w", repo, tag, storage.Classify(err, storage.TagKey(repo, tag)))
	}
	return nil
}

// List relies on bucket listings being in lexical key order, which every
// gocloud driver guarantees.
func (s *Bucket) List(ctx context.Context, repo string, n int, last string) ([]string, error) {
	prefix := storage.TagsPrefix(repo)
	out := []string{}
	opts := &blob.ListOptions{Prefix: prefix, Delimiter: "/"}
	if last != "" {
		opts.BeforeList = storage.StartAfter(last)
	}
	err := storage.Each(ctx, s.bucket, opts, func(obj *blob.ListObject) (bool, error) {
		tag := strings.TrimPrefix(obj.Key, prefix)
		if !obj.IsDir && tag > last {
			out = append(out, tag)
		}
		return n <= 0 || len(out) < n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing tags of %s: %w", repo, err)
	}
	return out, nil
}

var _ DigestUntagger = (*Bucket)(nil)

// UntagDigest deletes every tag of repo whose journal object names d. It
// reads each tag object itself (no cache); a tag written to d after the
// listing is the manifest PUT's to reconcile (it re-checks the manifest
// after writing its tags).
func (s *Bucket) UntagDigest(ctx context.Context, repo string, d digest.Digest) ([]string, error) {
	return UntagAll(ctx, s, repo, d)
}
