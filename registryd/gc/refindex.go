package gc

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// The refs index keeps, between runs, what each manifest names, so a run
// reads only the manifests it has not seen before: a collection on a
// schedule otherwise reads every manifest of the registry each time.
// Manifests are content-addressed, so what a digest names never changes
// and an entry never goes stale; an entry only outlives its manifest until
// the next run writes the index without it. Tags are not kept: a tag
// object is rewritten in place, and a listing's modification time (whole
// seconds on S3) cannot tell two writes apart.
//
// The index is 16 objects, by the first hex digit of the digest, each
// gzipped JSON. Only a run holding the lock writes it (a dry run reads
// it); an object that is missing, unreadable or of another version is
// ignored, and its manifests are read again.
const (
	refIndexPrefix = storage.GCPrefix + "refs/"
	// refIndexVersion names parseRefs' rules: a change to what it
	// collects must change it, so no run trusts entries made by others.
	refIndexVersion = 1
)

type refIndexShard struct {
	Version   int                      `json:"version"`
	Manifests map[string]refIndexEntry `json:"manifests"`
}

type refIndexEntry struct {
	Blobs     []digest.Digest `json:"blobs,omitempty"`
	Manifests []digest.Digest `json:"manifests,omitempty"`
	Subject   digest.Digest   `json:"subject,omitempty"`
}

func refIndexKey(shard byte) string { return refIndexPrefix + string(shard) }

func refIndexShardOf(d digest.Digest) byte { return d.Encoded()[0] }

const hexDigits = "0123456789abcdef"

// loadRefIndex fills the run's cache from the index and returns the
// digests it held by shard, to know later which shards changed.
func (c *collector) loadRefIndex(ctx context.Context) map[byte]map[digest.Digest]bool {
	loaded := make([]map[digest.Digest]refs, len(hexDigits))
	_ = c.parallel(ctx, len(hexDigits), func(ctx context.Context, i int) error {
		m, err := readRefIndexShard(ctx, c.bucket, refIndexKey(hexDigits[i]))
		if err != nil {
			c.log.Warn("gc: ignoring the refs index object", "key", refIndexKey(hexDigits[i]), "error", err)
		}
		loaded[i] = m
		return nil
	})
	held := map[byte]map[digest.Digest]bool{}
	c.cache.mu.Lock()
	defer c.cache.mu.Unlock()
	for i, m := range loaded {
		set := map[digest.Digest]bool{}
		for d, r := range m {
			c.cache.manifests[d] = r
			set[d] = true
		}
		c.cache.indexed += len(m)
		held[hexDigits[i]] = set
	}
	return held
}

// readRefIndexShard reads one index object; nil and no error when it does
// not exist.
func readRefIndexShard(ctx context.Context, b *blob.Bucket, key string) (map[digest.Digest]refs, error) {
	raw, err := b.ReadAll(ctx, key)
	if err != nil {
		if errors.Is(storage.Classify(err, key), storage.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	var shard refIndexShard
	if err := json.NewDecoder(io.LimitReader(zr, 1<<30)).Decode(&shard); err != nil {
		return nil, err
	}
	if shard.Version != refIndexVersion {
		return nil, fmt.Errorf("version %d, this collector writes %d", shard.Version, refIndexVersion)
	}
	out := make(map[digest.Digest]refs, len(shard.Manifests))
	for k, e := range shard.Manifests {
		d := digest.Digest(k)
		if d.Validate() != nil || refIndexShardOf(d) != key[len(key)-1] {
			return nil, fmt.Errorf("entry %q does not belong here", k)
		}
		out[d] = refs{blobs: e.Blobs, manifests: e.Manifests, subject: e.Subject}
	}
	return out, nil
}

// saveRefIndex writes the index for the manifests s links (those a run
// deleted are left out the next time), rewriting only the shards whose
// digests changed since held was loaded. A failure costs the next run
// reads, nothing else: it is logged, not returned.
func (c *collector) saveRefIndex(ctx context.Context, s *snapshot, gone plan, held map[byte]map[digest.Digest]bool) {
	want := map[byte]map[digest.Digest]refs{}
	c.cache.mu.Lock()
	for _, r := range s.repos {
		for d, o := range r.manifests {
			if _, ok := gone[o.key]; ok {
				continue
			}
			ref, ok := c.cache.manifests[d]
			if !ok {
				continue
			}
			sh := refIndexShardOf(d)
			if want[sh] == nil {
				want[sh] = map[digest.Digest]refs{}
			}
			want[sh][d] = ref
		}
	}
	c.cache.mu.Unlock()
	var changed []byte
	for i := range len(hexDigits) {
		sh := hexDigits[i]
		if !sameDigests(want[sh], held[sh]) {
			changed = append(changed, sh)
		}
	}
	err := c.parallel(ctx, len(changed), func(ctx context.Context, i int) error {
		sh := changed[i]
		if len(want[sh]) == 0 {
			if err := c.bucket.Delete(ctx, refIndexKey(sh)); err != nil && !errors.Is(storage.Classify(err, refIndexKey(sh)), storage.ErrNotFound) {
				return err
			}
			return nil
		}
		return writeRefIndexShard(ctx, c.bucket, refIndexKey(sh), want[sh])
	})
	if err != nil {
		c.log.Warn("gc: writing the refs index", "error", err)
	}
}

func sameDigests(a map[digest.Digest]refs, b map[digest.Digest]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for d := range a {
		if !b[d] {
			return false
		}
	}
	return true
}

func writeRefIndexShard(ctx context.Context, b *blob.Bucket, key string, m map[digest.Digest]refs) error {
	shard := refIndexShard{Version: refIndexVersion, Manifests: make(map[string]refIndexEntry, len(m))}
	for d, r := range m {
		shard.Manifests[d.String()] = refIndexEntry{Blobs: r.blobs, Manifests: r.manifests, Subject: r.subject}
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(shard); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return b.WriteAll(ctx, key, buf.Bytes(), &blob.WriterOptions{ContentType: "application/gzip"})
}
