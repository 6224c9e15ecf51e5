package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/manifest"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/reference"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// parseRef validates a manifest reference from the URL.
func parseRef(s string) (reference.Reference, error) {
	ref, err := reference.ParseReference(s)
	switch {
	case errors.Is(err, reference.ErrDigest):
		return ref, errcode.DigestInvalid.Wrap(err, s)
	case err != nil:
		return ref, errcode.TagInvalid.Wrap(err, s)
	}
	return ref, nil
}

// resolve returns the digest ref points to in repository name.
// In a mirrored repository (rt not nil) a tag is checked upstream once its
// TTL is over.
func (s *server) resolve(r *http.Request, name string, rt *mirror.Route, ref reference.Reference) (digest.Digest, error) {
	if ref.Digest != "" {
		return ref.Digest, nil
	}
	if rt != nil {
		d, err := s.opts.Mirror.ResolveTag(r.Context(), rt, ref.Tag)
		return d, storageErr(err, errcode.ManifestUnknown, ref.Tag)
	}
	desc, err := s.tags.Get(r.Context(), name, ref.Tag)
	if err != nil {
		return "", storageErr(err, errcode.ManifestUnknown, ref.Tag)
	}
	return desc.Digest, nil
}

func (s *server) getManifest(w http.ResponseWriter, r *http.Request, p pathParams) error {
	ref, err := parseRef(p.arg)
	if err != nil {
		return err
	}
	d, err := s.resolve(r, p.name, p.mirror, ref)
	if err != nil {
		return err
	}
	if p.mirror != nil {
		// Cached manifests are never asked for again: digests do not change.
		if err := s.opts.Mirror.EnsureManifest(r.Context(), p.mirror, d); err != nil {
			return storageErr(err, errcode.ManifestUnknown, ref.String())
		}
	}
	h := w.Header()
	if r.Method == http.MethodHead {
		if ref.Digest != "" {
			// An index naming this manifest may follow: keep its link
			// fresh for the garbage collector (docs/gc.md).
			if err := s.freshenManifest(r, p.name, d); err != nil {
				return storageErr(err, errcode.ManifestUnknown, ref.String())
			}
		}
		desc, err := s.store.StatManifest(r.Context(), p.name, d)
		if err != nil {
			return storageErr(err, errcode.ManifestUnknown, ref.String())
		}
		setManifestHeaders(h, desc)
		s.recordPull(p, ref)
		w.WriteHeader(http.StatusOK)
		return nil
	}
	desc, content, err := s.store.GetManifest(r.Context(), p.name, d)
	if err != nil {
		return storageErr(err, errcode.ManifestUnknown, ref.String())
	}
	setManifestHeaders(h, desc)
	s.recordPull(p, ref)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(content)
	return nil
}

// recordPull tells a store that keeps pull times that a tag was pulled: a
// GET or HEAD by tag, as clients resolve a tag (containerd HEADs it, then
// fetches by digest). Pulls by digest name no tag and record nothing.
// A mirrored repository's tags are recorded under its local name.
func (s *server) recordPull(p pathParams, ref reference.Reference) {
	if ref.Tag == "" {
		return
	}
	if pr, ok := s.tags.(tags.PullRecorder); ok {
		pr.RecordPull(p.name, ref.Tag)
	}
}

func setManifestHeaders(h http.Header, desc ocispec.Descriptor) {
	h.Set("Content-Type", desc.MediaType)
	h.Set("Content-Length", strconv.FormatInt(desc.Size, 10))
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Etag", `"`+desc.Digest.String()+`"`)
}

// readManifest reads a manifest body, refusing it with 413 past the limit
// without reading more than limit+1 bytes.
func (s *server) readManifest(r *http.Request) ([]byte, error) {
	limit := s.opts.MaxManifestBytes
	if r.ContentLength > limit {
		return nil, errcode.ManifestTooLarge.With(fmt.Sprintf("manifest of %d bytes exceeds the limit of %d", r.ContentLength, limit))
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, storageErr(err, errcode.ManifestInvalid, nil)
	}
	if int64(len(body)) > limit {
		return nil, errcode.ManifestTooLarge.With(fmt.Sprintf("manifest exceeds the limit of %d bytes", limit))
	}
	return body, nil
}

// putManifest is end-7a (PUT by tag or digest) and end-7b (?tag=…).
func (s *server) putManifest(w http.ResponseWriter, r *http.Request, p pathParams) error {
	ref, err := parseRef(p.arg)
	if err != nil {
		return err
	}
	tagList, err := manifestTags(r, ref)
	if err != nil {
		return err
	}
	body, err := s.readManifest(r)
	if err != nil {
		return err
	}
	d := digest.Canonical.FromBytes(body)
	if ref.Digest != "" {
		if d = ref.Digest.Algorithm().FromBytes(body); d != ref.Digest {
			return errcode.DigestInvalid.With(fmt.Sprintf("content digest is %s, URL names %s", d, ref.Digest))
		}
	}
	m, err := manifest.Parse(r.Header.Get("Content-Type"), body)
	if err != nil {
		return errcode.ManifestInvalid.Wrap(err, err.Error())
	}
	if err := s.checkReferences(r, p.name, m); err != nil {
		return err
	}
	if err := s.checkPush(r, p.name); err != nil {
		return err
	}
	desc := ocispec.Descriptor{MediaType: m.MediaType, Digest: d, Size: int64(len(body))}
	if err := s.storeManifest(r, p.name, desc, m, body); err != nil {
		return err
	}
	if err := s.confirmManifest(r, p.name, desc, m, body); err != nil {
		return err
	}
	put := s.tags.Put
	if cp, ok := s.tags.(tags.ContentPutter); ok && len(tagList) > 0 {
		content, err := s.contentSize(r.Context(), p.name, desc.Size, m)
		if err != nil {
			return storageErr(err, errcode.ManifestUnknown, desc.Digest)
		}
		put = func(ctx context.Context, name, tag string, desc ocispec.Descriptor) error {
			return cp.PutContent(ctx, name, tag, desc, content)
		}
	}
	for _, tag := range tagList {
		if err := put(r.Context(), p.name, tag, desc); err != nil {
			return storageErr(err, errcode.ManifestUnknown, tag)
		}
		if ref.Tag == "" {
			w.Header().Add("OCI-Tag", tag)
		}
	}
	if c, ok := s.tags.(tags.RepositoryCreator); ok && len(tagList) == 0 {
		if err := c.EnsureRepository(r.Context(), p.name); err != nil {
			return storageErr(err, errcode.NameUnknown, p.name)
		}
	}
	if len(tagList) > 0 {
		// A DELETE of this digest may have unlinked the manifest after it
		// was stored and before the tags were written, and then missed
		// them: the delete unlinks first and untags second, so looking
		// again now, after the tags, sees its unlink. Store the manifest
		// again then, so no tag is left pointing at nothing.
		_, err := s.store.StatManifest(r.Context(), p.name, d)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			if err := s.storeManifest(r, p.name, desc, m, body); err != nil {
				return err
			}
			if err := s.confirmManifest(r, p.name, desc, m, body); err != nil {
				return err
			}
		case err != nil:
			return storageErr(err, errcode.ManifestUnknown, d)
		}
	}
	h := w.Header()
	if m.Subject != nil {
		h.Set("OCI-Subject", m.Subject.Digest.String())
	}
	h.Set("Location", "/v2/"+p.name+"/manifests/"+d.String())
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// maxContentReads bounds the child manifests one push reads to size an
// index (nested indexes included): a hostile index naming thousands of
// indexes of thousands cannot make a push read millions of objects.
// Children past it count their own bytes only.
const maxContentReads = 1000

// contentSize is the bytes manifest m (of size bytes) holds, for quotas:
// its own, its blobs' (sizes checked against the stored blobs by
// checkReferences, not taken from the client) and, for an index, each
// child manifest's, read from the bucket (each distinct child read once).
func (s *server) contentSize(ctx context.Context, name string, size int64, m *manifest.Manifest) (int64, error) {
	c := contentCounter{s: s, name: name, sizes: map[digest.Digest]int64{}, reads: maxContentReads}
	return c.count(ctx, size, m)
}

// contentCounter sizes one manifest's tree with a budget of reads.
type contentCounter struct {
	s     *server
	name  string
	sizes map[digest.Digest]int64 // children sized so far
	reads int                     // left
}

func (c *contentCounter) count(ctx context.Context, size int64, m *manifest.Manifest) (int64, error) {
	total := size
	for _, b := range m.Blobs {
		total += b.Size
	}
	for _, child := range m.Manifests {
		n, err := c.child(ctx, child)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func (c *contentCounter) child(ctx context.Context, d ocispec.Descriptor) (int64, error) {
	if n, ok := c.sizes[d.Digest]; ok {
		return n, nil
	}
	if c.reads <= 0 {
		return d.Size, nil // checked against the stored manifest by checkReferences
	}
	c.reads--
	desc, body, err := c.s.store.GetManifest(ctx, c.name, d.Digest)
	if err != nil {
		return 0, err
	}
	n := desc.Size
	if m, err := manifest.Parse(desc.MediaType, body); err == nil {
		// A cycle is impossible: a manifest names its children by digest.
		if n, err = c.count(ctx, desc.Size, m); err != nil {
			return 0, err
		}
	}
	c.sizes[d.Digest] = n
	return n, nil
}

// manifestTags is the list of tags a PUT sets: the URL's tag, or the
// ?tag= parameters of a push by digest.
func manifestTags(r *http.Request, ref reference.Reference) ([]string, error) {
	if ref.Tag != "" {
		return []string{ref.Tag}, nil
	}
	list := r.URL.Query()["tag"]
	for _, t := range list {
		if err := reference.ValidateTag(t); err != nil {
			return nil, errcode.TagInvalid.Wrap(err, t)
		}
	}
	return list, nil
}

// checkReferences requires every blob and child manifest the manifest
// names to be in this repository. The subject is exempt: the spec lets
// referrers arrive before their subject.
func (s *server) checkReferences(r *http.Request, name string, m *manifest.Manifest) error {
	for _, b := range m.Blobs {
		info, err := s.store.StatBlob(r.Context(), name, b.Digest)
		if err != nil {
			return storageErr(err, errcode.ManifestBlobUnknown, b.Digest)
		}
		if err := checkSize(b, info.Size); err != nil {
			return err
		}
	}
	for _, c := range m.Manifests {
		desc, err := s.store.StatManifest(r.Context(), name, c.Digest)
		if err != nil {
			return storageErr(err, errcode.ManifestBlobUnknown, c.Digest)
		}
		if err := checkSize(c, desc.Size); err != nil {
			return err
		}
	}
	return nil
}

// confirmManifest is steps W2 and W3 of docs/gc.md for a manifest just
// stored (W1): it waits while the garbage collector holds an intent on the
// manifest or anything it names, then checks that all of it is still
// there. When a blob or child manifest was collected meanwhile, the PUT
// lost the race: the manifest link and referrer entry it wrote are
// removed, so nothing claims the manifest is complete, and the client
// gets MANIFEST_BLOB_UNKNOWN; pushing again uploads the blob again. When
// only the manifest's own content went, it is stored again.
func (s *server) confirmManifest(r *http.Request, name string, desc ocispec.Descriptor, m *manifest.Manifest, body []byte) error {
	ctx := r.Context()
	ds := []digest.Digest{desc.Digest}
	for _, b := range m.Blobs {
		ds = append(ds, b.Digest)
	}
	for _, c := range m.Manifests {
		ds = append(ds, c.Digest)
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		if err := s.store.AwaitIntents(ctx, true, ds...); err != nil {
			return storageErr(err, errcode.ManifestUnknown, desc.Digest)
		}
		lost, err := s.missingReference(r, name, m)
		if err != nil {
			return storageErr(err, errcode.ManifestUnknown, desc.Digest)
		}
		if lost != "" {
			s.unstoreManifest(r, name, desc.Digest, m)
			s.log.WarnContext(ctx, "manifest push lost a race with garbage collection", "repository", name, "digest", desc.Digest, "collected", lost)
			return errcode.ManifestBlobUnknown.Wrap(storage.ErrCollected,
				fmt.Sprintf("%s was deleted by garbage collection while this manifest was pushed; push it again", lost))
		}
		_, err = s.store.StatBlob(ctx, name, desc.Digest)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, storage.ErrNotFound) || attempt == attempts:
			return storageErr(err, errcode.ManifestUnknown, desc.Digest)
		}
		if err := s.storeManifest(r, name, desc, m, body); err != nil {
			return err
		}
	}
}

// missingReference names the first blob or child manifest of m that
// repository name no longer holds ("" when all are there).
func (s *server) missingReference(r *http.Request, name string, m *manifest.Manifest) (digest.Digest, error) {
	for _, b := range m.Blobs {
		if _, err := s.store.StatBlob(r.Context(), name, b.Digest); errors.Is(err, storage.ErrNotFound) {
			return b.Digest, nil
		} else if err != nil {
			return "", err
		}
	}
	for _, c := range m.Manifests {
		if _, err := s.store.StatBlob(r.Context(), name, c.Digest); errors.Is(err, storage.ErrNotFound) {
			return c.Digest, nil
		} else if err != nil {
			return "", err
		}
	}
	return "", nil
}

// unstoreManifest removes what storeManifest wrote, for a PUT that lost
// its race with the collector; failures leave garbage for the next run.
func (s *server) unstoreManifest(r *http.Request, name string, d digest.Digest, m *manifest.Manifest) {
	if err := s.store.DeleteManifest(r.Context(), name, d); err != nil && !errors.Is(err, storage.ErrNotFound) {
		s.log.WarnContext(r.Context(), "removing the link of a manifest whose blobs were collected", "repository", name, "digest", d, "error", err)
	}
	if m.Subject != nil {
		_ = s.store.DeleteReferrer(r.Context(), name, m.Subject.Digest, d)
	}
}

// freshenManifest renews manifest d's link for a HEAD by digest when it is
// older than the touch interval, and then answers "unknown" while the
// collector holds an intent on it.
func (s *server) freshenManifest(r *http.Request, name string, d digest.Digest) error {
	touched, err := s.store.TouchManifest(r.Context(), name, d, s.opts.GCTouchInterval)
	if err != nil || !touched {
		return err
	}
	if err := s.store.AwaitIntents(r.Context(), false, d); err != nil {
		if errors.Is(err, storage.ErrCollected) {
			return fmt.Errorf("%w: %w", err, storage.ErrNotFound)
		}
		return err
	}
	return nil
}

// checkSize refuses a descriptor whose size is not the stored content's:
// clients trust it to bound their reads.
func checkSize(d ocispec.Descriptor, stored int64) error {
	if d.Size != stored {
		return errcode.ManifestInvalid.With(fmt.Sprintf("descriptor %s has size %d, the stored content %d", d.Digest, d.Size, stored))
	}
	return nil
}

// storeManifest writes the manifest and, when it has a subject, its entry
// in the subject's referrers list.
func (s *server) storeManifest(r *http.Request, name string, desc ocispec.Descriptor, m *manifest.Manifest, body []byte) error {
	if err := s.store.PutManifest(r.Context(), name, desc.Digest, desc.MediaType, body); err != nil {
		return storageErr(err, errcode.ManifestUnknown, desc.Digest)
	}
	if m.Subject == nil {
		return nil
	}
	referrer := desc
	referrer.ArtifactType = m.ArtifactType
	referrer.Annotations = m.Annotations
	if err := s.store.PutReferrer(r.Context(), name, m.Subject.Digest, referrer); err != nil {
		return storageErr(err, errcode.ManifestUnknown, desc.Digest)
	}
	return nil
}

// deleteManifest is end-9: by tag it removes the tag; by digest the
// manifest, its referrers entry and every tag pointing at it.
func (s *server) deleteManifest(w http.ResponseWriter, r *http.Request, p pathParams) error {
	ref, err := parseRef(p.arg)
	if err != nil {
		return err
	}
	if ref.Tag != "" {
		if err := s.tags.Delete(r.Context(), p.name, ref.Tag); err != nil {
			return storageErr(err, errcode.ManifestUnknown, ref.Tag)
		}
	} else if err := s.deleteManifestDigest(r, p.name, ref.Digest); err != nil {
		return err
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// deleteManifestDigest unlinks the manifest first and untags second, the
// reverse of a push, which links first, tags second and then looks at the
// link again (putManifest): whatever the interleaving, a tag that survives
// points at a linked manifest.
func (s *server) deleteManifestDigest(r *http.Request, name string, d digest.Digest) error {
	ctx := r.Context()
	desc, content, err := s.store.GetManifest(ctx, name, d)
	if errors.Is(err, storage.ErrNotFound) {
		// Gone already, perhaps by a DELETE that failed before untagging:
		// finish that, then answer as the spec says.
		if err := s.untag(r, name, d); err != nil {
			return err
		}
	}
	if err != nil {
		return storageErr(err, errcode.ManifestUnknown, d)
	}
	if err := s.store.DeleteManifest(ctx, name, d); err != nil {
		return storageErr(err, errcode.ManifestUnknown, d)
	}
	if err := s.untag(r, name, d); err != nil {
		// Refused (an immutable tag points at it) or the tag store is
		// away: the DELETE fails, so the manifest stays, linked again,
		// and no tag is left pointing at nothing.
		if rerr := s.store.PutManifest(ctx, name, d, desc.MediaType, content); rerr != nil {
			s.log.ErrorContext(ctx, "re-linking a manifest after a failed DELETE", "repository", name, "digest", d, "error", rerr)
		}
		return err
	}
	if m, err := manifest.Parse(desc.MediaType, content); err == nil && m.Subject != nil {
		if err := s.store.DeleteReferrer(ctx, name, m.Subject.Digest, d); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return storageErr(err, errcode.ManifestUnknown, d)
		}
	}
	return nil
}

// untag removes every tag of repository name pointing at d, through the
// store's compare-and-swap when it has one.
func (s *server) untag(r *http.Request, name string, d digest.Digest) error {
	var err error
	if u, ok := s.tags.(tags.DigestUntagger); ok {
		_, err = u.UntagDigest(r.Context(), name, d)
	} else {
		_, err = tags.UntagAll(r.Context(), s.tags, name, d)
	}
	return storageErr(err, errcode.ManifestUnknown, d)
}

// checkPush refuses a push to a repository that does not exist and will
// not be created (autoCreateRepositories: false) before anything is
// stored for it. Stores without repository objects accept every push.
func (s *server) checkPush(r *http.Request, name string) error {
	if c, ok := s.tags.(tags.PushChecker); ok {
		return storageErr(c.CheckPush(r.Context(), name), errcode.NameUnknown, name)
	}
	return nil
}
