package gc

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// kind orders deletions: within a batch, everything that refers to content
// goes before the content.
type kind int

const (
	kindReferrer kind = iota
	kindManifest
	kindLayer
	kindBlob
	kindUpload
	kindTemp
)

// item is one object the collector means to delete.
type item struct {
	key  string
	d    digest.Digest // whose intent covers it ("" for uploads, temp files)
	kind kind
	size int64
}

// plan is what one mark found to be garbage, by key.
type plan map[string]item

func (p plan) add(it item) { p[it.key] = it }

// markManifests is phase 1's mark: manifest links no root reaches, and
// referrer entries of referrers that are not kept. Roots: tagged
// manifests, links younger than the cutoff (untagged ones: younger than
// the untagged delay), every link when untagged manifests are kept. A kept manifest keeps its index children and the
// referrers of it (by _referrers entry or by their subject field).
func (c *collector) markManifests(ctx context.Context, s *snapshot) (plan, error) {
	if err := c.prefetchManifests(ctx, s); err != nil {
		return nil, err
	}
	p := plan{}
	for _, r := range s.repos {
		bySubject := map[digest.Digest][]digest.Digest{}
		for ref := range r.referrers {
			bySubject[ref.subject] = append(bySubject[ref.subject], ref.d)
		}
		live := map[digest.Digest]bool{}
		var queue []digest.Digest
		keep := func(d digest.Digest) {
			if _, ok := r.manifests[d]; ok && !live[d] {
				live[d] = true
				queue = append(queue, d)
			}
		}
		for d, o := range r.manifests {
			refs, err := c.manifestRefs(ctx, d)
			if err != nil {
				return nil, err
			}
			if refs.subject != "" {
				bySubject[refs.subject] = append(bySubject[refs.subject], d)
			}
			if r.tags[d] || !c.opts.DeleteUntagged || !o.mod.Before(c.untaggedCutoff) {
				keep(d)
			}
		}
		for len(queue) > 0 {
			d := queue[0]
			queue = queue[1:]
			refs, err := c.manifestRefs(ctx, d)
			if err != nil {
				return nil, err
			}
			for _, child := range refs.manifests {
				keep(child)
			}
			for _, ref := range bySubject[d] {
				keep(ref)
			}
		}
		for d, o := range r.manifests {
			if !live[d] {
				p.add(item{key: o.key, d: d, kind: kindManifest})
			}
		}
		for ref, o := range r.referrers {
			if !live[ref.d] && o.mod.Before(c.cutoff) {
				p.add(item{key: o.key, d: ref.d, kind: kindReferrer})
			}
		}
	}
	return p, nil
}

// markContent is phase 2's mark: layer links that no manifest link of
// their repository names (except those in gone, which phase 1 deletes) and
// blobs no remaining link of any repository names. Existence, not
// reachability, decides here: a layer never goes while a manifest link
// naming it exists, so a push that revives an unreachable manifest (an
// index naming it) cannot find its layers gone.
func (c *collector) markContent(ctx context.Context, s *snapshot, gone plan) (plan, error) {
	if err := c.prefetchManifests(ctx, s); err != nil {
		return nil, err
	}
	p := plan{}
	linked := map[digest.Digest]bool{}
	for _, r := range s.repos {
		named := map[digest.Digest]bool{}
		for d, o := range r.manifests {
			if _, ok := gone[o.key]; ok {
				continue
			}
			linked[d] = true
			refs, err := c.manifestRefs(ctx, d)
			if err != nil {
				return nil, err
			}
			for _, b := range refs.blobs {
				named[b] = true
				linked[b] = true
			}
			for _, m := range refs.manifests {
				linked[m] = true
			}
		}
		for d, o := range r.layers {
			if named[d] || !o.mod.Before(c.cutoff) {
				linked[d] = true
				continue
			}
			if _, ok := r.manifests[d]; ok {
				if _, going := gone[r.manifests[d].key]; !going {
					linked[d] = true
					continue
				}
			}
			p.add(item{key: o.key, d: d, kind: kindLayer})
		}
	}
	for d, o := range s.blobs {
		if !linked[d] && o.mod.Before(c.cutoff) {
			p.add(item{key: o.key, d: d, kind: kindBlob, size: o.size})
		}
	}
	return p, nil
}

// markUploads is phase 3's mark: uploads past their lifetime (their
// marker older than lifetime + grace), remains of uploads without a marker
// older than the grace, and fileblob temp files older than the lifetime.
// registryd refuses to resume an upload past its lifetime, so nothing
// writes to what this deletes but a request already in flight, which the
// grace covers.
func (c *collector) markUploads(s *snapshot) plan {
	p := plan{}
	expired := c.start.Add(-c.opts.UploadLifetime - c.opts.Grace)
	for id, objs := range s.uploads {
		var marker *object
		newest := time.Time{}
		for i, o := range objs {
			if o.key == storage.UploadMarkerKey(id) {
				marker = &objs[i]
			}
			if o.mod.After(newest) {
				newest = o.mod
			}
		}
		if (marker != nil && marker.mod.Before(expired)) || (marker == nil && newest.Before(c.cutoff)) {
			for _, o := range objs {
				p.add(item{key: o.key, kind: kindUpload, size: o.size})
			}
		}
	}
	temps := c.start.Add(-c.opts.UploadLifetime)
	for _, o := range s.temps {
		if o.mod.Before(temps) {
			p.add(item{key: o.key, kind: kindTemp, size: o.size})
		}
	}
	return p
}
