package gc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// object is what a listing says about one key.
type object struct {
	key  string
	mod  time.Time
	size int64
}

// referrer identifies a _referrers entry: referrer d of subject s.
type referrer struct{ subject, d digest.Digest }

// repoState is one repository as a listing saw it.
type repoState struct {
	layers    map[digest.Digest]object
	manifests map[digest.Digest]object
	referrers map[referrer]object
	// tags are the digests the tag journal (and the TagSource) name.
	tags map[digest.Digest]bool
}

func newRepoState() *repoState {
	return &repoState{layers: map[digest.Digest]object{}, manifests: map[digest.Digest]object{},
		referrers: map[referrer]object{}, tags: map[digest.Digest]bool{}}
}

// snapshot is one listing of the whole bucket.
type snapshot struct {
	repos   map[string]*repoState
	blobs   map[digest.Digest]object
	uploads map[string][]object // by upload id
	temps   []object
	intents []object
	leases  []object // mirror fetch leases
}

// refs is what a manifest names.
type refs struct {
	blobs, manifests []digest.Digest
	subject          digest.Digest
}

// cache keeps what never changes within a run (manifest content is
// content-addressed) or changes with the object's listing entry (a tag).
type cache struct {
	mu        sync.Mutex
	manifests map[digest.Digest]refs
	read      int // manifests read from storage
	indexed   int // manifests the refs index held at the start
	tags      map[string]tagEntry
}

type tagEntry struct {
	mod  time.Time
	size int64
	d    digest.Digest
}

func newCache() *cache {
	return &cache{manifests: map[digest.Digest]refs{}, tags: map[string]tagEntry{}}
}

// scan lists the whole bucket once and reads the tag journal entries it
// has not read yet.
func (c *collector) scan(ctx context.Context) (*snapshot, error) { return c.scanPrefix(ctx, "", nil) }

// rescan is the confirming mark's listing: repos/ only, which holds every
// reference a writer writes (links, referrer entries, tags). The blobs
// come from the first listing: a blob that was a candidate there cannot
// have changed since (content is written only if absent, and only this run,
// holding the lock, deletes it).
func (c *collector) rescan(ctx context.Context, first *snapshot) (*snapshot, error) {
	return c.scanPrefix(ctx, "repos/", first)
}

func (c *collector) scanPrefix(ctx context.Context, prefix string, first *snapshot) (*snapshot, error) {
	s := &snapshot{repos: map[string]*repoState{}, blobs: map[digest.Digest]object{}, uploads: map[string][]object{}}
	if first != nil {
		s.blobs, s.uploads, s.temps, s.intents, s.leases = first.blobs, first.uploads, first.temps, first.intents, first.leases
	}
	repo := func(name string) *repoState {
		r := s.repos[name]
		if r == nil {
			r = newRepoState()
			s.repos[name] = r
		}
		return r
	}
	var tagKeys []object
	var tagRepos []string
	// The listing's pages are fetched inside Each: the time between two
	// callbacks is storage work, paced like every other request.
	returned := time.Now()
	err := storage.Each(ctx, c.bucket, &blob.ListOptions{Prefix: prefix}, func(o *blob.ListObject) (bool, error) {
		defer func() { returned = time.Now() }()
		c.pace.add(time.Since(returned))
		if err := c.pace.wait(ctx); err != nil {
			return false, err
		}
		if o.IsDir {
			return true, nil
		}
		obj := object{key: o.Key, mod: o.ModTime, size: o.Size}
		switch k := o.Key; {
		case strings.HasPrefix(k, "blobs/"):
			if d := storage.ParseDigestPath(strings.TrimPrefix(k, "blobs/")); d != "" {
				s.blobs[d] = obj
			}
		case strings.HasPrefix(k, "repos/"):
			rest := strings.TrimPrefix(k, "repos/")
			i := strings.Index(rest, "/_")
			if i < 0 {
				return true, nil
			}
			name, tail := rest[:i], rest[i+2:]
			switch {
			case strings.HasPrefix(tail, "layers/"):
				if d := storage.ParseDigestPath(strings.TrimPrefix(tail, "layers/")); d != "" {
					repo(name).layers[d] = obj
				}
			case strings.HasPrefix(tail, "manifests/"):
				if d := storage.ParseDigestPath(strings.TrimPrefix(tail, "manifests/")); d != "" {
					repo(name).manifests[d] = obj
				}
			case strings.HasPrefix(tail, "referrers/"):
				parts := strings.Split(strings.TrimPrefix(tail, "referrers/"), "/")
				if len(parts) == 4 {
					sub, d := storage.ParseDigestPath(parts[0]+"/"+parts[1]), storage.ParseDigestPath(parts[2]+"/"+parts[3])
					if sub != "" && d != "" {
						repo(name).referrers[referrer{sub, d}] = obj
					}
				}
			case strings.HasPrefix(tail, "tags/"):
				repo(name)
				tagKeys = append(tagKeys, obj)
				tagRepos = append(tagRepos, name)
			}
		case strings.HasPrefix(k, "uploads/"):
			id, _, ok := strings.Cut(strings.TrimPrefix(k, "uploads/"), "/")
			if ok {
				s.uploads[id] = append(s.uploads[id], obj)
			}
		case strings.HasPrefix(k, storage.TempPrefix):
			s.temps = append(s.temps, obj)
		case strings.HasPrefix(k, storage.IntentsPrefix):
			s.intents = append(s.intents, obj)
		case strings.HasPrefix(k, storage.MirrorLeasesPrefix):
			s.leases = append(s.leases, obj)
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the bucket: %w", err)
	}
	// One read per tag the cache does not know, on the workers: a
	// thousand serial reads are most of a mark's time otherwise.
	tagged := make([]digest.Digest, len(tagKeys))
	if err := c.parallel(ctx, len(tagKeys), func(ctx context.Context, i int) error {
		d, err := c.tagDigest(ctx, tagKeys[i])
		tagged[i] = d
		return err
	}); err != nil {
		return nil, err
	}
	for i, d := range tagged {
		if d != "" {
			s.repos[tagRepos[i]].tags[d] = true
		}
	}
	if c.opts.Tags != nil {
		extra, err := c.opts.Tags.TagDigests(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading tags: %w", err)
		}
		for name, ds := range extra {
			for _, d := range ds {
				repo(name).tags[d] = true
			}
		}
	}
	return s, nil
}

// tagDigest reads the digest a tag journal object names, from the cache
// when its listing entry did not change. A stale entry could only name a
// manifest the tag left, which then stays one run longer: every tag write
// also writes its manifest's link fresh, so the new target is a root anyway.
func (c *collector) tagDigest(ctx context.Context, o object) (digest.Digest, error) {
	c.cache.mu.Lock()
	e, ok := c.cache.tags[o.key]
	c.cache.mu.Unlock()
	if ok && e.mod.Equal(o.mod) && e.size == o.size {
		return e.d, nil
	}
	b, err := c.bucket.ReadAll(ctx, o.key)
	if err != nil {
		if err = storage.Classify(err, o.key); errors.Is(err, storage.ErrNotFound) {
			return "", nil // untagged since the listing
		}
		return "", err
	}
	var desc ocispec.Descriptor
	if json.Unmarshal(b, &desc) != nil || desc.Digest.Validate() != nil {
		return "", nil
	}
	c.cache.mu.Lock()
	c.cache.tags[o.key] = tagEntry{mod: o.mod, size: o.size, d: desc.Digest}
	c.cache.mu.Unlock()
	return desc.Digest, nil
}

// prefetchManifests reads, on the workers, every manifest a link of s
// names that the cache lacks, so the marks that follow read none serially.
func (c *collector) prefetchManifests(ctx context.Context, s *snapshot) error {
	var missing []digest.Digest
	seen := map[digest.Digest]bool{}
	c.cache.mu.Lock()
	for _, r := range s.repos {
		for d := range r.manifests {
			if _, ok := c.cache.manifests[d]; !ok && !seen[d] {
				seen[d] = true
				missing = append(missing, d)
			}
		}
	}
	c.cache.mu.Unlock()
	return c.parallel(ctx, len(missing), func(ctx context.Context, i int) error {
		_, err := c.manifestRefs(ctx, missing[i])
		return err
	})
}

// manifestRefs reads and parses manifest d (once per run). Content that is
// missing or is not a manifest names nothing.
func (c *collector) manifestRefs(ctx context.Context, d digest.Digest) (refs, error) {
	c.cache.mu.Lock()
	r, ok := c.cache.manifests[d]
	c.cache.mu.Unlock()
	if ok {
		return r, nil
	}
	b, err := c.bucket.ReadAll(ctx, storage.BlobKey(d))
	if err != nil {
		if err = storage.Classify(err, storage.BlobKey(d)); errors.Is(err, storage.ErrNotFound) {
			return refs{}, nil // not cached: the content may be stored again
		}
		return refs{}, err
	}
	r = parseRefs(b)
	c.cache.mu.Lock()
	c.cache.read++
	c.cache.manifests[d] = r
	c.cache.mu.Unlock()
	return r, nil
}

// parseRefs collects every digest a manifest of any supported kind names,
// leniently: the registry validated it on the way in, and keeping too
// much is the safe side.
func parseRefs(b []byte) refs {
	var m struct {
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Blobs     []ocispec.Descriptor `json:"blobs"`
		Manifests []ocispec.Descriptor `json:"manifests"`
		Subject   *ocispec.Descriptor  `json:"subject"`
	}
	if json.Unmarshal(b, &m) != nil {
		return refs{}
	}
	var r refs
	if m.Config != nil && m.Config.Digest.Validate() == nil {
		r.blobs = append(r.blobs, m.Config.Digest)
	}
	for _, l := range append(m.Layers, m.Blobs...) {
		if l.Digest.Validate() == nil {
			r.blobs = append(r.blobs, l.Digest)
		}
	}
	for _, c := range m.Manifests {
		if c.Digest.Validate() == nil {
			r.manifests = append(r.manifests, c.Digest)
		}
	}
	if m.Subject != nil && m.Subject.Digest.Validate() == nil {
		r.subject = m.Subject.Digest
	}
	return r
}
