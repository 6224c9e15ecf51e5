package tags

import (
	"context"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ContentPutter is an optional capability of a Store that counts what tags
// hold, for quotas: PutContent is Put with the bytes the manifest holds
// (its own, its blobs', its child manifests'), and refuses, with DENIED, a
// tag that would take the repository past its quota. The refusal is
// decided in the same compare-and-swap as the tag, so racing pushes cannot
// pass the quota together.
type ContentPutter interface {
	PutContent(ctx context.Context, repo, tag string, desc ocispec.Descriptor, contentSize int64) error
}
