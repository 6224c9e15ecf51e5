package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"
)

// Garbage collection's side of the bucket (docs/gc.md):
//
//	_stevedore/gc/intents/<alg>/<hh>    the collector is about to delete the
//	                                    digests it lists, all starting with hh
//	_stevedore/gc/lock                  one collector at a time
//	_stevedore/gc/refs/<h>              what the manifests name, kept between
//	                                    runs (registryd/gc/refindex.go)
//	_stevedore/tmp/                     fileblob's temp files in a pod (TMPDIR)
//	_stevedore/mirror/leases/<alg>/<hex> an upstream fetch in progress
//	                                    (docs/mirror.md); the collector
//	                                    removes those of replicas that died
const (
	GCPrefix           = "_stevedore/gc/"
	IntentsPrefix      = GCPrefix + "intents/"
	GCLockKey          = GCPrefix + "lock"
	TempPrefix         = "_stevedore/tmp/"
	MirrorLeasesPrefix = "_stevedore/mirror/leases/"
)

// IntentSkew is how long past its expiry an intent still counts: the
// collector's clock and a writer's may differ by this much.
const IntentSkew = time.Minute

// ErrCollected: content a request was about to vouch for is being (or was)
// deleted by garbage collection. It comes wrapped with ErrNotFound when the
// content is gone, so callers answering "unknown" need not know about it.
var ErrCollected = errors.New("deleted by garbage collection")

// IntentKey is the intent object that covers digest d: one per algorithm
// and first two hex digits, so a batch of a thousand digests costs the
// collector at most 256 writes, and a writer still one read.
func IntentKey(d digest.Digest) string {
	return IntentsPrefix + d.Algorithm().String() + "/" + d.Encoded()[:2]
}

// ParseDigestPath is the digest of "<alg>/<hex>", or "" when it names none.
func ParseDigestPath(p string) digest.Digest {
	d := digest.Digest(strings.Replace(p, "/", ":", 1))
	if d.Validate() != nil {
		return ""
	}
	return d
}

// Intent says a collector run may delete everything of the digests it
// lists (their blobs, links and referrer entries) until Expires.
type Intent struct {
	Run     string          `json:"run"`
	Expires time.Time       `json:"expires"`
	Digests []digest.Digest `json:"digests"`
}

// Live reports whether the intent still binds at now.
func (in Intent) Live(now time.Time) bool { return now.Before(in.Expires.Add(IntentSkew)) }

// IntentShards groups ds by the intent object that covers them.
func IntentShards(ds []digest.Digest) map[string][]digest.Digest {
	out := map[string][]digest.Digest{}
	for _, d := range ds {
		out[IntentKey(d)] = append(out[IntentKey(d)], d)
	}
	return out
}

// PutIntent writes the intent object key (an IntentKey) naming in.Digests,
// which must all map to key.
func (s *Store) PutIntent(ctx context.Context, key string, in Intent) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return WriteSmall(ctx, s.bucket, key, b, &blob.WriterOptions{ContentType: "application/json"})
}

// ReadIntent returns the intent covering d; ok is false when there is none
// or it does not list d. Always read from the bucket: this is the read of
// the Dekker pair.
func (s *Store) ReadIntent(ctx context.Context, d digest.Digest) (Intent, bool, error) {
	in, ok, err := s.readIntentKey(ctx, d)
	if err != nil || !ok {
		return in, ok, err
	}
	if in.Digests != nil && !slices.Contains(in.Digests, d) {
		return Intent{}, false, nil
	}
	return in, true, nil
}

func (s *Store) readIntentKey(ctx context.Context, d digest.Digest) (Intent, bool, error) {
	b, err := s.bucket.ReadAll(ctx, IntentKey(d))
	if err != nil {
		err = classify(err, IntentKey(d))
		if errors.Is(err, ErrNotFound) {
			return Intent{}, false, nil
		}
		return Intent{}, false, err
	}
	var in Intent
	if err := json.Unmarshal(b, &in); err != nil {
		// Unreadable (a torn write is impossible; a foreign object):
		// treat as live for a minute from now, never forever.
		return Intent{Expires: time.Now()}, true, nil
	}
	return in, true, nil
}

// DeleteIntent removes the intent object key.
func (s *Store) DeleteIntent(ctx context.Context, key string) error {
	err := s.delete(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// AwaitIntents is step W2 of docs/gc.md: it reads the intent of every
// digest in ds, after the caller wrote its reference (W1). With wait, it
// returns once none is live (or ctx ends); without, it returns
// ErrCollected at the first live one. The caller then checks (W3) that
// what it vouches for still exists.
func (s *Store) AwaitIntents(ctx context.Context, wait bool, ds ...digest.Digest) error {
	for _, d := range ds {
		backoff := 20 * time.Millisecond
		for {
			in, ok, err := s.ReadIntent(ctx, d)
			if err != nil {
				return err
			}
			if !ok || !in.Live(time.Now()) {
				break
			}
			if !wait {
				return fmt.Errorf("%s: %w", d, ErrCollected)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for the garbage collector to finish with %s: %w", d, ctx.Err())
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
	return nil
}

// ConfirmBlob runs W2 and W3 for blob d of repository name after its link
// was written: it waits (or, without wait, refuses at once) while a
// collector holds an intent on d, then checks that the link and the
// content are still there. A blob the collector took wraps ErrCollected
// and ErrNotFound.
func (s *Store) ConfirmBlob(ctx context.Context, name string, d digest.Digest, wait bool) (BlobInfo, error) {
	if err := s.AwaitIntents(ctx, wait, d); err != nil {
		if errors.Is(err, ErrCollected) {
			return BlobInfo{}, fmt.Errorf("%w: %w", err, ErrNotFound)
		}
		return BlobInfo{}, err
	}
	info, err := s.StatBlob(ctx, name, d)
	if errors.Is(err, ErrNotFound) {
		return BlobInfo{}, fmt.Errorf("%w: %w", ErrCollected, err)
	}
	return info, err
}

// StatBlobFresh is StatBlob for a HEAD, which tells the client the blob
// exists: a link older than touchAfter is written again, so the collector
// sees it fresh for the grace period, and then confirmed (ConfirmBlob,
// without waiting). A fresher link is not written: HEAD storms cost
// reads (the link's attributes, the intent, the content's attributes).
// touchAfter <= 0 touches every time.
func (s *Store) StatBlobFresh(ctx context.Context, name string, d digest.Digest, touchAfter time.Duration) (BlobInfo, error) {
	key := layerLinkKey(name, d)
	attrs, err := s.local.Attributes(ctx, key)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			return BlobInfo{}, err
		}
		key = manifestLinkKey(name, d)
		if attrs, err = s.local.Attributes(ctx, key); err != nil {
			if errors.Is(err, ErrNotFound) {
				return BlobInfo{}, fmt.Errorf("blob %s in %s: %w", d, name, ErrNotFound)
			}
			return BlobInfo{}, err
		}
	}
	if touchAfter > 0 && time.Since(attrs.ModTime) < touchAfter {
		// Fresh already (another writer's link, maybe one that has yet to
		// confirm): no write, but the same read of the intent, before the
		// content is looked at, so a blob being deleted is never vouched for.
		if err := s.AwaitIntents(ctx, false, d); err != nil {
			if errors.Is(err, ErrCollected) {
				return BlobInfo{}, fmt.Errorf("%w: %w", err, ErrNotFound)
			}
			return BlobInfo{}, err
		}
		return s.statContent(ctx, d)
	}
	if err := s.touch(ctx, key); err != nil {
		return BlobInfo{}, err
	}
	return s.ConfirmBlob(ctx, name, d, false)
}

// touch writes key again with its own content, renewing its modification
// time.
func (s *Store) touch(ctx context.Context, key string) error {
	b, err := s.readAll(ctx, key, 4096)
	if err != nil {
		return err
	}
	ct := "text/plain"
	if strings.Contains(key, "/_manifests/") {
		ct = "application/json"
	}
	return s.writeSmall(ctx, key, b, ct)
}

// TouchManifest renews the link of manifest d in repository name when it
// is older than touchAfter, for a HEAD by digest (an index push may follow
// that names it). It reports whether it wrote.
func (s *Store) TouchManifest(ctx context.Context, name string, d digest.Digest, touchAfter time.Duration) (bool, error) {
	key := manifestLinkKey(name, d)
	attrs, err := s.local.Attributes(ctx, key)
	if err != nil {
		return false, err
	}
	if touchAfter > 0 && time.Since(attrs.ModTime) < touchAfter {
		return false, nil
	}
	return true, s.touch(ctx, key)
}
