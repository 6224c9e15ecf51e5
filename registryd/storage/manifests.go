package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// manifestLink is the content of a _manifests link: enough to answer HEAD
// without reading the manifest.
type manifestLink struct {
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

// PutManifest stores content (already validated, digest d) byte-exact in
// blobs/ and links it into repository name with its media type.
func (s *Store) PutManifest(ctx context.Context, name string, d digest.Digest, mediaType string, content []byte) error {
	if _, err := s.WriteContent(ctx, d, int64(len(content)), bytes.NewReader(content)); err != nil {
		return err
	}
	link, err := json.Marshal(manifestLink{MediaType: mediaType, Size: int64(len(content))})
	if err != nil {
		return err
	}
	return s.writeSmall(ctx, manifestLinkKey(name, d), link, "application/json")
}

// StatManifest returns the descriptor of manifest d in repository name.
// The link's attributes are read every time (that is what says the
// manifest is still there); its content only when they changed.
func (s *Store) StatManifest(ctx context.Context, name string, d digest.Digest) (ocispec.Descriptor, error) {
	key := manifestLinkKey(name, d)
	attrs, err := s.local.Attributes(ctx, key)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	st := stamp{modTime: attrs.ModTime, size: attrs.Size}
	link, ok := s.links.get(key, st)
	if !ok {
		b, err := s.readAll(ctx, key, 4096)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		if err := json.Unmarshal(b, &link); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("corrupt manifest link %s: %w", key, err)
		}
		// Stamped with the attributes read before the content: if the
		// link changed in between, the next call sees newer attributes
		// and reads it again.
		s.links.put(key, link, st, 1)
	}
	return ocispec.Descriptor{MediaType: link.MediaType, Digest: d, Size: link.Size}, nil
}

// GetManifest returns the descriptor and the exact bytes of manifest d.
// Callers must not modify the bytes: they may be shared with the cache.
func (s *Store) GetManifest(ctx context.Context, name string, d digest.Digest) (ocispec.Descriptor, []byte, error) {
	desc, err := s.StatManifest(ctx, name, d)
	if err != nil {
		return desc, nil, err
	}
	if content, ok := s.manifests.get(d.String(), stamp{}); ok && int64(len(content)) == desc.Size {
		return desc, content, nil
	}
	content, err := s.readAll(ctx, BlobKey(d), desc.Size+1)
	if err != nil {
		return desc, nil, err
	}
	if int64(len(content)) != desc.Size {
		return desc, nil, fmt.Errorf("manifest %s: stored size differs from link: %w", d, ErrSizeMismatch)
	}
	s.manifests.put(d.String(), content, stamp{}, int64(len(content)))
	return desc, content, nil
}

// DeleteManifest unlinks manifest d from repository name.
func (s *Store) DeleteManifest(ctx context.Context, name string, d digest.Digest) error {
	return s.delete(ctx, manifestLinkKey(name, d))
}

// PutReferrer records desc as a referrer of subject in repository name.
func (s *Store) PutReferrer(ctx context.Context, name string, subject digest.Digest, desc ocispec.Descriptor) error {
	b, err := json.Marshal(desc)
	if err != nil {
		return err
	}
	return s.writeSmall(ctx, referrerKey(name, subject, desc.Digest), b, "application/json")
}

// DeleteReferrer removes referrer d of subject.
func (s *Store) DeleteReferrer(ctx context.Context, name string, subject, d digest.Digest) error {
	return s.delete(ctx, referrerKey(name, subject, d))
}
