package tags

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

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
	if err := storage.WriteSmall(ctx, s.bucket, storage.TagKey(repo, tag), b, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
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
	it := s.bucket.List(&blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	out := []string{}
	for n <= 0 || len(out) < n {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("listing tags of %s: %w", repo, storage.Classify(err, prefix))
		}
		tag := strings.TrimPrefix(obj.Key, prefix)
		if obj.IsDir || tag <= last {
			continue
		}
		out = append(out, tag)
	}
	return out, nil
}
