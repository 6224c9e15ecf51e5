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
	bucket    *blob.Bucket
	reader    *storage.SmallReader // tag reads: straight from the file on file://
	immutable ImmutableRules
	listStart storage.ListStart
}

// BucketOptions configure a bucket tag store.
type BucketOptions struct {
	// ImmutableTags are enforced by the store (standalone mode, from
	// --immutable-tags): a matching tag is created with a conditional
	// write, so of racing first pushes exactly one wins, and is never
	// moved or deleted afterwards. Every replica must be given the same
	// rules. The journal beneath the kubernetes store has none: status
	// decides there.
	ImmutableTags ImmutableRules
	// ListStart lets a page of tags start after its last tag on drivers
	// beyond S3 (internal/bucket.ListStart: GCS); without it they list
	// from the repository's first tag.
	ListStart storage.ListStart
}

// NewBucket returns the bucket tag store over b.
func NewBucket(b *blob.Bucket) *Bucket { return NewBucketWith(b, BucketOptions{}) }

// NewBucketWith returns the bucket tag store over b with opts.
func NewBucketWith(b *blob.Bucket, opts BucketOptions) *Bucket {
	return &Bucket{bucket: b, reader: storage.NewSmallReader(b), immutable: opts.ImmutableTags, listStart: opts.ListStart}
}

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
	opts := &blob.WriterOptions{ContentType: "application/json"}
	if rule, ok := s.immutable.Match(tag); ok {
		return s.create(ctx, repo, tag, desc, rule, b, opts)
	}
	if err := storage.WriteSmallDurable(ctx, s.reader, storage.TagKey(repo, tag), b, opts); err != nil {
		return fmt.Errorf("writing tag %s:%s: %w", repo, tag, err)
	}
	return nil
}

// create writes an immutable tag only if it does not exist; if it does,
// the push succeeds only when it names the same manifest.
func (s *Bucket) create(ctx context.Context, repo, tag string, desc ocispec.Descriptor, rule ImmutableRule, b []byte, opts *blob.WriterOptions) error {
	err := storage.CreateSmall(ctx, s.reader, storage.TagKey(repo, tag), b, opts)
	if !errors.Is(err, storage.ErrExists) {
		if err != nil {
			return fmt.Errorf("writing tag %s:%s: %w", repo, tag, err)
		}
		return nil
	}
	cur, err := s.Get(ctx, repo, tag)
	if err != nil {
		return err
	}
	if cur.Digest != desc.Digest {
		return ErrImmutable(tag, rule, cur.Digest, ActionOverwritten)
	}
	return nil
}

// refuseImmutable is the refusal to remove tag when a rule covers it (nil
// when none does, or the tag does not exist).
func (s *Bucket) refuseImmutable(ctx context.Context, repo, tag, action string) error {
	rule, ok := s.immutable.Match(tag)
	if !ok {
		return nil
	}
	cur, err := s.Get(ctx, repo, tag)
	if err != nil {
		return err
	}
	return ErrImmutable(tag, rule, cur.Digest, action)
}

func (s *Bucket) Delete(ctx context.Context, repo, tag string) error {
	if err := s.refuseImmutable(ctx, repo, tag, ActionDeleted); err != nil {
		return err
	}
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
		opts.BeforeList = storage.StartAfter(last, s.listStart)
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
//
// When an immutable tag points at d it removes none and answers DENIED
// (Delete refuses it again, should one be pushed meanwhile).
func (s *Bucket) UntagDigest(ctx context.Context, repo string, d digest.Digest) ([]string, error) {
	if len(s.immutable) > 0 {
		all, err := s.List(ctx, repo, 0, "")
		if err != nil {
			return nil, err
		}
		for _, t := range all {
			rule, ok := s.immutable.Match(t)
			if !ok {
				continue
			}
			desc, err := s.Get(ctx, repo, t)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if desc.Digest == d {
				return nil, ErrImmutable(t, rule, d, ActionUntagged)
			}
		}
	}
	return UntagAll(ctx, s, repo, d)
}
