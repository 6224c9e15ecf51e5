package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
)

// ScrubReport is what Scrub found. A healthy bucket has every list empty.
type ScrubReport struct {
	// Blobs, Manifests and Tags count what was checked.
	Blobs, Manifests, Tags int
	// Bytes is the content read and hashed.
	Bytes int64
	// Corrupt lists blob keys whose bytes do not hash to their key.
	Corrupt []string
	// DanglingLinks lists repository links (_layers, _manifests) whose
	// content is not in blobs/.
	DanglingLinks []string
	// DanglingTags lists tag objects (repos/<name>/_tags/<tag>) pointing at
	// a manifest the repository does not hold.
	DanglingTags []string
}

// OK reports whether the scrub found nothing wrong.
func (r ScrubReport) OK() bool {
	return len(r.Corrupt) == 0 && len(r.DanglingLinks) == 0 && len(r.DanglingTags) == 0
}

// Problems lists every finding, one line each.
func (r ScrubReport) Problems() []string {
	var out []string
	for _, k := range r.Corrupt {
		out = append(out, "corrupt blob: "+k)
	}
	for _, k := range r.DanglingLinks {
		out = append(out, "link to missing content: "+k)
	}
	for _, k := range r.DanglingTags {
		out = append(out, "tag of a missing manifest: "+k)
	}
	return out
}

// Scrub reads the whole bucket: every blob is hashed and compared with its
// key, every repository link must have its content, and every tag in the
// bucket's tag journal must point at a manifest its repository holds. It
// only reads. Upload parts and temp files are not checked.
func Scrub(ctx context.Context, b *blob.Bucket) (ScrubReport, error) {
	var rep ScrubReport
	it := b.List(&blob.ListOptions{Prefix: blobsPrefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, classify(err, blobsPrefix)
		}
		ok, n, err := verifyBlob(ctx, b, obj.Key)
		if err != nil {
			return rep, err
		}
		rep.Blobs++
		rep.Bytes += n
		if !ok {
			rep.Corrupt = append(rep.Corrupt, obj.Key)
		}
	}
	it = b.List(&blob.ListOptions{Prefix: reposPrefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return rep, nil
		}
		if err != nil {
			return rep, classify(err, reposPrefix)
		}
		if err := scrubRepoKey(ctx, b, obj.Key, &rep); err != nil {
			return rep, err
		}
	}
}

// verifyBlob hashes the object at key (blobs/<alg>/<hex>) and reports
// whether the bytes match; a key that names no valid digest is corrupt.
func verifyBlob(ctx context.Context, b *blob.Bucket, key string) (bool, int64, error) {
	d := digest.Digest(strings.Replace(strings.TrimPrefix(key, blobsPrefix), "/", ":", 1))
	if d.Validate() != nil {
		return false, 0, nil
	}
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return false, 0, classify(err, key)
	}
	defer r.Close()
	v := d.Verifier()
	n, err := io.Copy(v, r)
	if err != nil {
		return false, n, classify(err, key)
	}
	return v.Verified(), n, nil
}

// scrubRepoKey checks one object under repos/.
func scrubRepoKey(ctx context.Context, b *blob.Bucket, key string, rep *ScrubReport) error {
	rest := strings.TrimPrefix(key, reposPrefix)
	for _, kind := range []string{"/_layers/", "/_manifests/"} {
		if name, dpath, ok := strings.Cut(rest, kind); ok && !strings.Contains(name, "/_") {
			if kind == "/_manifests/" {
				rep.Manifests++
			}
			d := digest.Digest(strings.Replace(dpath, "/", ":", 1))
			if d.Validate() != nil {
				rep.DanglingLinks = append(rep.DanglingLinks, key)
				return nil
			}
			ok, err := b.Exists(ctx, BlobKey(d))
			if err != nil {
				return classify(err, BlobKey(d))
			}
			if !ok {
				rep.DanglingLinks = append(rep.DanglingLinks, key)
			}
			return nil
		}
	}
	name, tag, ok := strings.Cut(rest, "/_tags/")
	if !ok || strings.Contains(name, "/_") || strings.Contains(tag, "/") {
		return nil
	}
	rep.Tags++
	raw, err := b.ReadAll(ctx, key)
	if err != nil {
		return classify(err, key)
	}
	var desc ocispec.Descriptor
	if err := json.Unmarshal(raw, &desc); err != nil || desc.Digest.Validate() != nil {
		rep.DanglingTags = append(rep.DanglingTags, fmt.Sprintf("%s (unreadable)", key))
		return nil
	}
	ok, err = b.Exists(ctx, manifestLinkKey(name, desc.Digest))
	if err != nil {
		return classify(err, manifestLinkKey(name, desc.Digest))
	}
	if !ok {
		rep.DanglingTags = append(rep.DanglingTags, key+" -> "+desc.Digest.String())
	}
	return nil
}
