// Package gc is registryd's online garbage collector: it marks what tags,
// indexes, referrers and fresh writes keep, and deletes the rest of one
// bucket while any number of registryd replicas keep serving it. The
// protocol that makes that safe against racing pushes is in docs/gc.md.
package gc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

// ErrBusy: another collection holds the bucket's lock.
var ErrBusy = errors.New("another garbage collection is running on this bucket")

// TagSource names the manifests tagged outside the bucket's tag journal
// (the kubernetes tag store's Repository status), by repository.
type TagSource interface {
	TagDigests(ctx context.Context) (map[string][]digest.Digest, error)
}

// Options tune a run; the zero value collects with the defaults.
type Options struct {
	// Grace: nothing modified more recently than this before the run
	// started is deleted. Default 15m; 0 only through NoGrace (tests).
	Grace   time.Duration
	NoGrace bool
	// DeleteUntagged also deletes manifests that no tag, index or subject
	// keeps; otherwise every manifest link is a root.
	DeleteUntagged bool
	// UntaggedDelay keeps an untagged manifest this long after its link
	// was last written (pushed, or pushed again); below Grace, Grace
	// decides.
	UntaggedDelay time.Duration
	// UploadLifetime: uploads started longer ago (plus Grace) are deleted;
	// registryd must refuse them after the same time. Default 24h.
	UploadLifetime time.Duration
	// DryRun marks and reports, and changes nothing.
	DryRun bool
	// Pace is the share of the run's wall time its storage requests may
	// take, summed over the workers (0.5: on average half a request in
	// flight), so a collection leaves the backend and the machine to the
	// registry's clients; 0 sends requests as fast as Workers allow.
	Pace float64
	// BatchSize is how many digests one intent batch covers. Default
	// 10,000: a batch costs up to 256 intent writes and a listing of
	// repos/ whatever its size, so fewer, larger batches cost less.
	BatchSize int
	// IntentTTL bounds a batch: no delete is sent after its intents
	// expire, and writers stop waiting for them. Default 2m.
	IntentTTL time.Duration
	// Workers send deletes in parallel (gocloud has no batch delete).
	// Default 16.
	Workers int
	// Tags adds tags kept outside the bucket; nil: the journal only.
	Tags TagSource
	// Logger gets a line per deleted key at debug level.
	Logger *slog.Logger
	// pause, in tests, holds each batch between its confirming mark and
	// its deletes: a slow backend's window for racing writes, made wide.
	pause time.Duration
}

// Report is what a run deleted (or, dry, would delete).
type Report struct {
	Started  time.Time
	Duration time.Duration
	DryRun   bool
	// Deleted lists every key, sorted.
	Deleted []string
	// Counts by kind, and the bytes of the deleted blobs, uploads and
	// temp files.
	Manifests, Referrers, LayerLinks, Blobs, Uploads, TempFiles int
	// MirrorLeases counts the fetch leases of replicas that died.
	MirrorLeases int
	Bytes        int64
	// Rescued counts what one mark called garbage and the confirming
	// mark kept: writes that raced the run and won.
	Rescued int
	// Deferred counts confirmed garbage left for the next run because its
	// batch's intents expired (IntentTTL) before the deletes were sent.
	Deferred int
	// ManifestsRead counts the manifests read from storage; the others'
	// references came from the refs index of earlier runs (refindex.go).
	ManifestsRead int
	// Repositories and live manifests seen by the first mark.
	Repositories int
	// StoredBlobs and StoredBytes are the blobs the run's first listing
	// found, less those it deleted (or, in a dry run, would delete): the
	// Registry's physical size as of the run, each blob once. Blobs
	// pushed while it ran are not in them.
	StoredBlobs int
	StoredBytes int64
}

// Summary is the one line a run prints.
func (r Report) Summary() string {
	verb := "deleted"
	if r.DryRun {
		verb = "would delete"
	}
	deferred := ""
	if r.MirrorLeases > 0 {
		deferred = fmt.Sprintf("; %d dead mirror leases", r.MirrorLeases)
	}
	if r.Deferred > 0 {
		deferred += fmt.Sprintf("; %d left for the next run (intents expired)", r.Deferred)
	}
	return fmt.Sprintf("gc: %s %d manifests, %d referrer entries, %d layer links, %d blobs, %d upload objects, %d temp files (%d bytes) in %d repositories; %d rescued by racing writes%s; %d blobs (%d bytes) stored; took %s",
		verb, r.Manifests, r.Referrers, r.LayerLinks, r.Blobs, r.Uploads, r.TempFiles, r.Bytes, r.Repositories, r.Rescued, deferred, r.StoredBlobs, r.StoredBytes, r.Duration.Round(time.Millisecond))
}

// countStored sets StoredBlobs and StoredBytes from the blobs of s that
// the run did not delete.
func (r *Report) countStored(s *snapshot) {
	gone := make(map[string]bool, len(r.Deleted))
	for _, k := range r.Deleted {
		gone[k] = true
	}
	r.StoredBlobs, r.StoredBytes = 0, 0
	for _, o := range s.blobs {
		if !gone[o.key] {
			r.StoredBlobs++
			r.StoredBytes += o.size
		}
	}
}

func (r *Report) countLease(key string) {
	r.Deleted = append(r.Deleted, key)
	r.MirrorLeases++
}

func (r *Report) count(it item) {
	r.Deleted = append(r.Deleted, it.key)
	r.Bytes += it.size
	switch it.kind {
	case kindManifest:
		r.Manifests++
	case kindReferrer:
		r.Referrers++
	case kindLayer:
		r.LayerLinks++
	case kindBlob:
		r.Blobs++
	case kindUpload:
		r.Uploads++
	case kindTemp:
		r.TempFiles++
	}
}

type collector struct {
	bucket *blob.Bucket
	store  *storage.Store
	opts   Options
	run    string
	start  time.Time
	cutoff time.Time
	// untaggedCutoff: untagged manifest links written after it stay.
	untaggedCutoff time.Time
	// pace spaces out storage requests (Options.Pace); nil: flat out.
	pace  *pacer
	cache *cache
	log   *slog.Logger
	// batch deletes up to 1,000 keys a request where the backend can
	// (S3); nil: one request per key.
	batch *storage.BatchDeleter
}

// Run collects the garbage of bucket once.
func Run(ctx context.Context, bucket *blob.Bucket, opts Options) (Report, error) {
	if opts.Grace <= 0 && !opts.NoGrace {
		opts.Grace = 15 * time.Minute
	}
	if opts.NoGrace {
		opts.Grace = 0
	}
	if opts.UploadLifetime <= 0 {
		opts.UploadLifetime = uploads.DefaultLifetime
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 10000
	}
	if opts.IntentTTL <= 0 {
		opts.IntentTTL = 2 * time.Minute
	}
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	c := &collector{bucket: bucket, store: storage.New(bucket), opts: opts, run: hex.EncodeToString(id[:]),
		start: time.Now(), cache: newCache(), log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.cutoff = c.start.Add(-opts.Grace)
	c.untaggedCutoff = c.start.Add(-max(opts.Grace, opts.UntaggedDelay))
	c.pace = newPacer(opts.Pace)
	rep := Report{Started: c.start, DryRun: opts.DryRun}
	var err error
	if !opts.DryRun {
		c.batch, err = storage.NewBatchDeleter(ctx, bucket)
	}
	if err == nil {
		err = c.collect(ctx, &rep)
	}
	sort.Strings(rep.Deleted)
	rep.Duration = time.Since(c.start)
	return rep, err
}

func (c *collector) collect(ctx context.Context, rep *Report) error {
	if c.opts.DryRun {
		return c.dryRun(ctx, rep)
	}
	release, err := c.lock(ctx)
	if err != nil {
		return err
	}
	defer release()
	t := time.Now()
	held := c.loadRefIndex(ctx)
	s, err := c.scan(ctx)
	if err != nil {
		return err
	}
	rep.Repositories = len(s.repos)
	c.clearDeadIntents(ctx, s)
	for _, o := range c.deadLeases(ctx, s) {
		if err := c.bucket.Delete(ctx, o.key); err == nil {
			rep.countLease(o.key)
		}
	}
	p1, err := c.markManifests(ctx, s)
	if err != nil {
		return err
	}
	c.log.Info("gc: phase 1 marked", "took", time.Since(t), "garbage", len(p1), "batchDelete", c.batch != nil)
	t = time.Now()
	if err := c.sweep(ctx, s, p1, c.markManifests, rep); err != nil {
		return err
	}
	c.log.Info("gc: phase 1 swept", "took", time.Since(t))
	t = time.Now()
	// Phase 2's candidates come from the first listing without what phase
	// 1 deleted (as a dry run computes them): a second full listing would
	// cost as much as the first and decide nothing, since each batch's
	// confirming mark lists repos/ again after the intents, and that
	// listing, taken after phase 1's deletes, is what decides.
	gone := plan{}
	deleted := map[string]bool{}
	for _, k := range rep.Deleted {
		deleted[k] = true
	}
	for k, it := range p1 {
		if deleted[k] {
			gone.add(it)
		}
	}
	markContent := func(ctx context.Context, s *snapshot) (plan, error) { return c.markContent(ctx, s, nil) }
	p2, err := c.markContent(ctx, s, gone)
	if err != nil {
		return err
	}
	c.log.Info("gc: phase 2 marked", "took", time.Since(t), "garbage", len(p2))
	t = time.Now()
	if err := c.sweep(ctx, s, p2, markContent, rep); err != nil {
		return err
	}
	c.log.Info("gc: phase 2 swept", "took", time.Since(t))
	p3 := c.markUploads(s)
	if err := c.deleteAll(ctx, sortedItems(p3), rep); err != nil {
		return err
	}
	collected := plan{}
	for _, k := range rep.Deleted {
		collected.add(item{key: k})
	}
	c.saveRefIndex(ctx, s, collected, held)
	c.logManifestReads(rep)
	rep.countStored(s)
	return nil
}

func (c *collector) logManifestReads(rep *Report) {
	c.cache.mu.Lock()
	rep.ManifestsRead = c.cache.read
	indexed := c.cache.indexed
	c.cache.mu.Unlock()
	c.log.Info("gc: manifests", "read", rep.ManifestsRead, "indexed", indexed)
}

// dryRun reports what a run would delete on this listing: phase 2 as if
// phase 1 had deleted what it marked.
func (c *collector) dryRun(ctx context.Context, rep *Report) error {
	c.loadRefIndex(ctx)
	s, err := c.scan(ctx)
	if err != nil {
		return err
	}
	rep.Repositories = len(s.repos)
	p1, err := c.markManifests(ctx, s)
	if err != nil {
		return err
	}
	p2, err := c.markContent(ctx, s, p1)
	if err != nil {
		return err
	}
	for _, p := range []plan{p1, p2, c.markUploads(s)} {
		for _, it := range sortedItems(p) {
			rep.count(it)
			c.log.Info("would delete", "key", it.key)
		}
	}
	for _, o := range c.deadLeases(ctx, s) {
		rep.countLease(o.key)
		c.log.Info("would delete", "key", o.key)
	}
	sort.Strings(rep.Deleted)
	c.logManifestReads(rep)
	rep.countStored(s)
	return nil
}

// sweep deletes the items of p in batches of digests. For each batch it
// writes the intents (G1), marks again on a new listing (G2) and deletes
// only what both marks call garbage (G3), before the intents expire.
func (c *collector) sweep(ctx context.Context, first *snapshot, p plan, mark func(context.Context, *snapshot) (plan, error), rep *Report) error {
	byDigest := map[digest.Digest][]item{}
	for _, it := range p {
		byDigest[it.d] = append(byDigest[it.d], it)
	}
	ds := make([]digest.Digest, 0, len(byDigest))
	for d := range byDigest {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	for len(ds) > 0 {
		n := min(len(ds), c.opts.BatchSize)
		batch := ds[:n]
		ds = ds[n:]
		if err := c.sweepBatch(ctx, first, batch, byDigest, mark, rep); err != nil {
			return err
		}
	}
	return nil
}

func (c *collector) sweepBatch(ctx context.Context, first *snapshot, batch []digest.Digest, byDigest map[digest.Digest][]item,
	mark func(context.Context, *snapshot) (plan, error), rep *Report) error {
	// The lock outlives every batch, so no second run can start and
	// remove intents this one relies on.
	if err := c.writeLock(ctx); err != nil {
		return fmt.Errorf("renewing the lock: %w", err)
	}
	expires := time.Now().Add(c.opts.IntentTTL)
	// Paced up to half the intents' life, then flat out: a paced batch
	// on a large bucket must not see its deletes deferred run after run.
	c.pace.hurryFrom(expires.Add(-c.opts.IntentTTL / 2))
	defer c.pace.hurryFrom(time.Time{})
	shards := storage.IntentShards(batch)
	keys := make([]string, 0, len(shards))
	for k := range shards {
		keys = append(keys, k)
	}
	// Intents are removed however the batch ends; with a context of their
	// own, so a cancelled run still clears them.
	defer c.deleteIntents(context.WithoutCancel(ctx), keys)
	t := time.Now()
	if err := c.parallel(ctx, len(keys), func(ctx context.Context, i int) error {
		return c.store.PutIntent(ctx, keys[i], storage.Intent{Run: c.run, Expires: expires, Digests: shards[keys[i]]})
	}); err != nil {
		return fmt.Errorf("writing intents: %w", err)
	}
	intentsTook, t := time.Since(t), time.Now()
	s, err := c.rescan(ctx, first)
	if err != nil {
		return err
	}
	again, err := mark(ctx, s)
	if err != nil {
		return err
	}
	confirmTook, t := time.Since(t), time.Now()
	var confirmed []item
	for _, d := range batch {
		for _, it := range byDigest[d] {
			if _, ok := again[it.key]; ok {
				confirmed = append(confirmed, it)
			} else {
				rep.Rescued++
			}
		}
	}
	if c.opts.pause > 0 {
		time.Sleep(c.opts.pause)
	}
	// No delete leaves after the intents expire: a writer then no longer
	// waits for them. What was not deleted by then is left for the next
	// run (Deferred), not an error: a slow batch is safe, only late.
	dctx, cancel := context.WithDeadline(ctx, expires)
	defer cancel()
	before := len(rep.Deleted)
	err = c.deleteAll(dctx, confirmed, rep)
	// Where a batch's time goes (writing intents, the confirming mark,
	// the deletes): what --pace and --batch-size trade.
	c.log.Info("gc: batch swept", "digests", len(batch), "intents", len(keys), "intentsTook", intentsTook,
		"confirmTook", confirmTook, "deleted", len(rep.Deleted)-before, "deleteTook", time.Since(t))
	if err != nil && ctx.Err() == nil && errors.Is(dctx.Err(), context.DeadlineExceeded) {
		rep.Deferred += len(confirmed) - (len(rep.Deleted) - before)
		return nil
	}
	return err
}

// deleteIntents removes the intent objects keys: in one request where
// the backend can.
func (c *collector) deleteIntents(ctx context.Context, keys []string) {
	c.pace.hurryFrom(time.Now()) // writers may be waiting on them: never paced
	if c.batch != nil && len(keys) <= storage.MaxBatchDelete {
		if c.batch.Delete(ctx, keys) == nil {
			return
		}
	}
	_ = c.parallel(ctx, len(keys), func(ctx context.Context, i int) error {
		return c.store.DeleteIntent(ctx, keys[i])
	})
}

// deleteAll deletes items, referring objects before content (kind order).
func (c *collector) deleteAll(ctx context.Context, items []item, rep *Report) error {
	slices.SortFunc(items, func(a, b item) int {
		if a.kind != b.kind {
			return int(a.kind) - int(b.kind)
		}
		if a.key < b.key {
			return -1
		}
		return 1
	})
	var mu sync.Mutex
	for start := 0; start < len(items); {
		end := start
		for end < len(items) && items[end].kind == items[start].kind {
			end++
		}
		group := items[start:end]
		var err error
		if c.batch != nil {
			err = c.deleteBatched(ctx, group, rep, &mu)
		} else {
			err = c.parallel(ctx, len(group), func(ctx context.Context, i int) error {
				it := group[i]
				err := c.bucket.Delete(ctx, it.key)
				if err != nil {
					if err = storage.Classify(err, it.key); !errors.Is(err, storage.ErrNotFound) {
						return err
					}
					return nil // gone already: not ours to count
				}
				c.log.Debug("deleted", "key", it.key)
				mu.Lock()
				rep.count(it)
				mu.Unlock()
				return nil
			})
		}
		if err != nil {
			return err
		}
		start = end
	}
	return nil
}

// deleteBatched deletes items of one kind in requests of up to
// storage.MaxBatchDelete keys, on the collector's workers. S3 does not say
// whether a key was there: every key of a request that succeeded counts
// (each was in both marks' listings moments ago).
func (c *collector) deleteBatched(ctx context.Context, items []item, rep *Report, mu *sync.Mutex) error {
	var chunks [][]item
	for len(items) > 0 {
		n := 0
		for n < len(items) && n < storage.MaxBatchDelete && storage.Batchable(items[n].key) {
			n++
		}
		if n == 0 { // a key gocloud would escape: on its own, through gocloud
			if err := c.bucket.Delete(ctx, items[0].key); err == nil {
				mu.Lock()
				rep.count(items[0])
				mu.Unlock()
			} else if err = storage.Classify(err, items[0].key); !errors.Is(err, storage.ErrNotFound) {
				return err
			}
			items = items[1:]
			continue
		}
		chunks = append(chunks, items[:n])
		items = items[n:]
	}
	return c.parallel(ctx, len(chunks), func(ctx context.Context, i int) error {
		keys := make([]string, len(chunks[i]))
		for j, it := range chunks[i] {
			keys[j] = it.key
		}
		if err := c.batch.Delete(ctx, keys); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, it := range chunks[i] {
			c.log.Debug("deleted", "key", it.key)
			rep.count(it)
		}
		return nil
	})
}

// parallel runs f for 0..n-1 on the collector's workers and returns the
// first error.
func (c *collector) parallel(ctx context.Context, n int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range min(c.opts.Workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				// A select with both cases ready picks either, so an item
				// can arrive after ctx ended: it is not started. (A delete
				// sent once a batch's intents expired was this.)
				if ctx.Err() != nil {
					continue
				}
				if err := c.pace.do(ctx, func() error { return f(ctx, i) }); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			i = n
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil && n > 0 {
		return ctx.Err()
	}
	return first
}

func sortedItems(p plan) []item {
	out := make([]item, 0, len(p))
	for _, it := range p {
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b item) int {
		if a.key < b.key {
			return -1
		}
		return 1
	})
	return out
}

// clearDeadIntents removes intents of runs that died: past their expiry
// and the skew, no writer heeds them any more.
func (c *collector) clearDeadIntents(ctx context.Context, s *snapshot) {
	for _, o := range s.intents {
		b, err := c.bucket.ReadAll(ctx, o.key)
		if err != nil {
			continue
		}
		var in storage.Intent
		if json.Unmarshal(b, &in) == nil && in.Live(time.Now()) {
			continue
		}
		_ = c.bucket.Delete(ctx, o.key)
	}
}

// deadLeases are the mirror fetch leases of replicas that died mid-fetch
// (docs/mirror.md): expired past the skew, and not rewritten for longer
// than the grace. A live holder rewrites its lease every third of its TTL;
// if one is rewritten between this read and the delete, the worst outcome
// is that a second replica fetches the same blob from the upstream.
func (c *collector) deadLeases(ctx context.Context, s *snapshot) []object {
	var dead []object
	for _, o := range s.leases {
		if !o.mod.Before(c.cutoff) {
			continue
		}
		b, err := c.bucket.ReadAll(ctx, o.key)
		if err != nil {
			continue
		}
		var l struct {
			Expires time.Time `json:"expires"`
		}
		if json.Unmarshal(b, &l) == nil && !l.Expires.Add(storage.IntentSkew).Before(time.Now()) {
			continue
		}
		dead = append(dead, o)
	}
	return dead
}

// lockState is the content of the bucket's collector lock.
type lockState struct {
	Run     string    `json:"run"`
	Expires time.Time `json:"expires"`
}

// lockTTL bounds how long a dead run's lock keeps others out.
const lockTTL = time.Hour

// lock takes the bucket's collector lock: created only if absent, or
// replaced when expired (a run that died). Two runs that both find it
// expired may both delete it; the one whose create loses gets ErrBusy, and
// a run whose lock another replaced finds out at its next batch (writeLock).
func (c *collector) lock(ctx context.Context) (func(), error) {
	raw, err := c.bucket.ReadAll(ctx, storage.GCLockKey)
	switch err = storage.Classify(err, storage.GCLockKey); {
	case err == nil:
		var held lockState
		if json.Unmarshal(raw, &held) == nil && time.Now().Before(held.Expires) {
			return nil, fmt.Errorf("%w (run %s, until %s)", ErrBusy, held.Run, held.Expires.Format(time.RFC3339))
		}
		if err := c.bucket.Delete(ctx, storage.GCLockKey); err != nil && !errors.Is(storage.Classify(err, ""), storage.ErrNotFound) {
			return nil, storage.Classify(err, storage.GCLockKey)
		}
	case !errors.Is(err, storage.ErrNotFound):
		return nil, err
	}
	b, _ := json.Marshal(lockState{Run: c.run, Expires: time.Now().Add(lockTTL)})
	// An exclusive create: a conditional write on object stores, a hard
	// link on a directory (fileblob's IfNotExist lets two writers pass).
	if err := storage.CreateSmall(ctx, storage.NewSmallReader(c.bucket), storage.GCLockKey, b, nil); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return nil, ErrBusy
		}
		return nil, err
	}
	return func() { _ = c.bucket.Delete(context.WithoutCancel(ctx), storage.GCLockKey) }, nil
}

// writeLock renews the lock this run holds, after checking that it still
// holds it.
func (c *collector) writeLock(ctx context.Context) error {
	raw, err := c.bucket.ReadAll(ctx, storage.GCLockKey)
	if err != nil {
		return storage.Classify(err, storage.GCLockKey)
	}
	var held lockState
	if json.Unmarshal(raw, &held) != nil || held.Run != c.run {
		return fmt.Errorf("%w: the lock was taken over by run %q", ErrBusy, held.Run)
	}
	b, _ := json.Marshal(lockState{Run: c.run, Expires: time.Now().Add(lockTTL)})
	return storage.WriteSmall(ctx, c.bucket, storage.GCLockKey, b, nil)
}
