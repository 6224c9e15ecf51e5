package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
)

// ReferrersPage returns up to n referrers of subject that keep accepts
// (nil: all), in key order, starting at pageToken (nil: the first page), and
// the token of the next page (nil: no more). It lists and reads only as
// many referrers as it scans to fill the page, so the cost of a page is
// proportional to the page (plus what the filter skips), never to every
// referrer of the subject. The token is the backend's own: callers that
// hand it to clients must protect it (the server signs it).
func (s *Store) ReferrersPage(ctx context.Context, name string, subject digest.Digest, n int, pageToken []byte,
	keep func(ocispec.Descriptor) bool) ([]ocispec.Descriptor, []byte, error) {
	prefix := referrersPrefix(name, subject)
	if pageToken == nil {
		pageToken = blob.FirstPageToken
	}
	var out []ocispec.Descriptor
	for len(out) < n {
		// Never list more than the free slots: the next token then points
		// just past the last referrer looked at.
		objs, next, err := s.bucket.ListPage(ctx, pageToken, n-len(out), &blob.ListOptions{Prefix: prefix})
		if errors.Is(err, io.EOF) {
			return out, nil, nil
		}
		if err != nil {
			return nil, nil, classify(err, prefix)
		}
		for _, obj := range objs {
			b, err := s.readAll(ctx, obj.Key, 1<<20)
			if errors.Is(err, ErrNotFound) {
				continue // deleted since the listing
			}
			if err != nil {
				return nil, nil, err
			}
			var desc ocispec.Descriptor
			if err := json.Unmarshal(b, &desc); err != nil {
				return nil, nil, fmt.Errorf("corrupt referrer %s: %w", obj.Key, err)
			}
			if keep == nil || keep(desc) {
				out = append(out, desc)
			}
		}
		if len(next) == 0 {
			return out, nil, nil
		}
		pageToken = next
	}
	return out, pageToken, nil
}
