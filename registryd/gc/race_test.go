package gc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
	"github.com/stevedore-dev/stevedore/registryd/gc"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// TestManifestPutAgainstIntent plays the collector's side of docs/gc.md by
// hand: an intent on a layer, then (or not) the layer's deletion, while a
// manifest PUT naming it is in flight. The PUT waits for the intent, and
// then answers from what is left: 400 MANIFEST_BLOB_UNKNOWN, leaving no
// manifest behind, when the layer went; 201 when the collector kept it.
func TestManifestPutAgainstIntent(t *testing.T) {
	tests := []struct {
		name       string
		collect    bool
		wantStatus int
	}{
		{"the collector deletes the layer: the PUT loses", true, http.StatusBadRequest},
		{"the collector keeps the layer: the PUT wins", false, http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t, 1, server.Options{})
			c := client{e.servers[0]}
			store := storage.New(e.bucket)
			img := newImage()
			for _, b := range img.blobs() {
				must(t, c.pushBlob(ctx, "app", b))
			}
			layer := digest.FromBytes(img.layers[0])
			must(t, store.PutIntent(ctx, storage.IntentKey(layer), storage.Intent{Run: "test", Expires: time.Now().Add(time.Minute), Digests: []digest.Digest{layer}}))
			done := make(chan error, 1)
			go func() { done <- c.putManifest(ctx, "app", "v1", ocispec.MediaTypeImageManifest, img.manifest()) }()
			select {
			case err := <-done:
				t.Fatalf("the PUT answered (%v) while the collector held an intent on its layer", err)
			case <-time.After(300 * time.Millisecond):
			}
			if tt.collect {
				must(t, store.DeleteBlob(ctx, "app", layer))
				must(t, e.bucket.Delete(ctx, storage.BlobKey(layer)))
			}
			must(t, store.DeleteIntent(ctx, storage.IntentKey(layer)))
			err := <-done
			var ae *apiError
			switch {
			case tt.wantStatus == http.StatusCreated && err != nil:
				t.Fatalf("PUT: %v", err)
			case tt.wantStatus == http.StatusBadRequest && (!errors.As(err, &ae) || ae.status != 400 || ae.code != "MANIFEST_BLOB_UNKNOWN"):
				t.Fatalf("PUT: %v, want 400 MANIFEST_BLOB_UNKNOWN", err)
			}
			_, _, err = c.do(ctx, "HEAD", "/v2/app/manifests/"+img.digest().String(), nil, http.StatusOK)
			if tt.collect && err == nil {
				t.Fatal("the manifest of a lost PUT is still served")
			}
			if tt.collect {
				// Pushing again (HEAD says the layer is gone) succeeds.
				must(t, c.push(ctx, "app", "v1", img))
			}
			must(t, c.pull(ctx, "app", "v1"))
		})
	}
}

// TestHeadAndMountAgainstIntent: while the collector holds an intent on a
// blob, a HEAD that renews the link answers 404 and a mount falls back to
// an upload session, so no client is told it exists; without one, the
// HEAD answers 200 and renews the link.
func TestHeadAndMountAgainstIntent(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, 1, server.Options{GCTouchInterval: time.Minute})
	c := client{e.servers[0]}
	store := storage.New(e.bucket)
	blob := randomBytes(64)
	d := digest.FromBytes(blob)
	must(t, c.pushBlob(ctx, "app", blob))
	e.age(t, time.Hour)
	must(t, c.pushBlob(ctx, "third", blob))
	must(t, store.PutIntent(ctx, storage.IntentKey(d), storage.Intent{Run: "test", Expires: time.Now().Add(time.Minute), Digests: []digest.Digest{d}}))
	if ok, err := c.exists(ctx, "app", d); err != nil || ok {
		t.Fatalf("HEAD during an intent: exists=%v err=%v, want 404", ok, err)
	}
	resp, _, err := c.do(ctx, "POST", "/v2/other/blobs/uploads/?mount="+d.String()+"&from=app", nil, http.StatusAccepted)
	if err != nil {
		t.Fatalf("mount during an intent: %v, want 202 (an upload session)", err)
	}
	_ = resp
	// A link fresher than the touch interval is not written again, but
	// the blob is not vouched for either while the intent stands.
	if ok, err := c.exists(ctx, "third", d); err != nil || ok {
		t.Fatalf("HEAD of a fresh link during an intent: exists=%v err=%v, want 404", ok, err)
	}
	must(t, store.DeleteIntent(ctx, storage.IntentKey(d)))
	if ok, err := c.exists(ctx, "app", d); err != nil || !ok {
		t.Fatalf("HEAD: exists=%v err=%v, want 200", ok, err)
	}
	// The HEAD renewed the link: a run with a grace shorter than the age
	// given above keeps the blob.
	rep, err := gc.Run(ctx, e.bucket, gc.Options{Grace: 30 * time.Minute})
	must(t, err)
	if rep.Blobs != 0 {
		t.Fatalf("%s: the HEAD did not renew the link", rep.Summary())
	}
}

// TestCollectWhilePushing is the torture test: three replicas over one
// bucket (file:// and versitygw), pushers that push new images (with shared
// layers), delete them, and push deleted ones again skipping every blob a
// HEAD vouches for, while the collector loops. No push may fail; afterwards
// every live image pulls from every replica with the right bytes, and a
// full walk finds exactly the live images' objects. The collector runs for
// 6 s, or until GC_TORTURE_RUNS cycles (`make test-gc-torture`: 1,000).
func TestCollectWhilePushing(t *testing.T) {
	for _, backend := range []string{"file", "s3"} {
		t.Run(backend, func(t *testing.T) {
			opts := server.Options{GCTouchInterval: 200 * time.Millisecond}
			if backend == "file" {
				collectWhilePushing(t, newEnv(t, 3, opts), 1500*time.Millisecond)
				return
			}
			// S3 lists modification times in whole seconds, which makes
			// everything look up to 1 s older: the grace, the window a
			// client has between a HEAD and its manifest PUT (docs/gc.md),
			// needs that second on top (production's is 15 minutes).
			srv := storageservers.Start(t, storageservers.S3)
			collectWhilePushing(t, newEnvOver(t, 3, opts, func() *blob.Bucket {
				b, err := bucket.Open(context.Background(), srv.URL, bucket.Options{Env: srv.Env, Prefix: "torture/"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Close() })
				return b
			}), 3*time.Second)
		})
	}
}

func collectWhilePushing(t *testing.T, e *env, grace time.Duration) {
	const (
		pushers  = 4
		duration = 6 * time.Second
		// The working set stays bounded however long the test runs (1,000
		// collector cycles in make test-gc-torture): a pusher with maxLive
		// live images deletes instead of pushing a new one, and remembers
		// at most maxKept images, forgetting the oldest deleted ones (the
		// collector has them), so the bucket, and each cycle's listing,
		// stays about the same size.
		maxLive = 12
		maxKept = 48
	)
	minRuns := int64(0)
	if s := os.Getenv("GC_TORTURE_RUNS"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("GC_TORTURE_RUNS=%q", s)
		}
		minRuns = n
	}
	var runs, rescued atomic.Int64
	ctx := t.Context()
	shared := [][]byte{randomBytes(256), randomBytes(256), randomBytes(256)}
	type pushed struct {
		repo, tag string
		img       image
		deleted   time.Time // zero: live
	}
	var mu sync.Mutex
	var all []*pushed
	began := time.Now()
	stop := began.Add(duration)
	going := func() bool { return time.Now().Before(stop) || runs.Load() < minRuns }
	var wg sync.WaitGroup
	var failures atomic.Int64
	var ops atomic.Int64
	fail := func(format string, args ...any) {
		failures.Add(1)
		t.Errorf(format, args...)
	}
	for p := range pushers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			repo := fmt.Sprintf("team%d/app", p%2)
			var mine []*pushed
			live := 0
			for n := 0; going() && failures.Load() == 0; n++ {
				c := client{e.servers[rng.IntN(len(e.servers))]}
				ops.Add(1)
				for excess := len(mine) - maxKept; excess > 0; {
					i := slices.IndexFunc(mine, func(x *pushed) bool { return !x.deleted.IsZero() })
					if i < 0 {
						break
					}
					mine = slices.Delete(mine, i, i+1)
					excess--
				}
				switch r := rng.IntN(10); {
				case (r < 4 && live < maxLive) || len(mine) == 0: // a new image
					x := &pushed{repo: repo, tag: fmt.Sprintf("p%d-%d", p, n), img: newImage(shared[rng.IntN(len(shared))])}
					if err := c.push(ctx, x.repo, x.tag, x.img); err != nil {
						fail("pushing a new image: %v", err)
					}
					mine = append(mine, x)
					live++
					mu.Lock()
					all = append(all, x)
					mu.Unlock()
				case r < 7 || live >= maxLive: // delete one
					x := mine[rng.IntN(len(mine))]
					if live >= maxLive {
						var alive []*pushed
						for _, y := range mine {
							if y.deleted.IsZero() {
								alive = append(alive, y)
							}
						}
						x = alive[rng.IntN(len(alive))]
					}
					if !x.deleted.IsZero() {
						continue
					}
					if err := c.deleteManifest(ctx, x.repo, x.img.digest()); err != nil {
						fail("deleting: %v", err)
					}
					mu.Lock()
					x.deleted = time.Now()
					mu.Unlock()
					live--
				default: // push a deleted one again, under a new tag, once the collector may take it
					var ripe []*pushed
					mu.Lock()
					for _, x := range mine {
						if !x.deleted.IsZero() && time.Since(x.deleted) > grace {
							ripe = append(ripe, x)
						}
					}
					mu.Unlock()
					if len(ripe) == 0 {
						continue
					}
					x := ripe[rng.IntN(len(ripe))]
					tag := fmt.Sprintf("p%d-%d-again", p, n)
					if err := c.push(ctx, x.repo, tag, x.img); err != nil {
						fail("pushing a deleted image again: %v", err)
					}
					mu.Lock()
					x.deleted, x.tag = time.Time{}, tag
					mu.Unlock()
					live++
				}
				time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for going() && failures.Load() == 0 {
			// Batches of 16 digests, each held open 30 ms between its
			// confirming mark and its deletes: many windows for racing
			// writes, while a cycle still clears what the pushers
			// left since the last one (batches of 4 fell behind, and
			// the bucket and every cycle's listings grew without end).
			rep, err := gc.Run(ctx, e.bucket, gc.WithPause(gc.Options{Grace: grace, DeleteUntagged: true, BatchSize: 16, IntentTTL: 10 * time.Second}, 30*time.Millisecond))
			if err != nil {
				fail("gc: %v", err)
				return
			}
			if n := runs.Add(1); n%100 == 0 {
				t.Logf("%d collector runs, %d operations, %s; last run: %s", n, ops.Load(), time.Since(began).Round(time.Second), rep.Summary())
			}
			rescued.Add(int64(rep.Rescued))
		}
	}()
	wg.Wait()
	if t.Failed() {
		return
	}
	// Let everything deleted age past the grace, collect once more, and
	// look at what is left.
	time.Sleep(grace + 100*time.Millisecond)
	rep, err := gc.Run(ctx, e.bucket, gc.Options{Grace: grace, DeleteUntagged: true})
	must(t, err)
	t.Logf("%d operations, %d collector runs, %d deletions rescued by racing writes; last run: %s", ops.Load(), runs.Load(), rescued.Load(), rep.Summary())
	want := map[string]bool{}
	for _, x := range all {
		if !x.deleted.IsZero() {
			continue
		}
		for _, url := range e.servers {
			if err := (client{url}).pull(ctx, x.repo, x.tag); err != nil {
				t.Errorf("pull %s:%s: %v", x.repo, x.tag, err)
			}
		}
		want["repos/"+x.repo+"/_tags/"+x.tag] = true
		want["repos/"+x.repo+"/_manifests/sha256/"+x.img.digest().Encoded()] = true
		want[storage.BlobKey(x.img.digest())] = true
		for _, b := range x.img.blobs() {
			want["repos/"+x.repo+"/_layers/sha256/"+digest.FromBytes(b).Encoded()] = true
			want[storage.BlobKey(digest.FromBytes(b))] = true
		}
	}
	got := e.keys(t)
	// The refs index (the collector's own) names exactly the live
	// manifests the last run saw.
	indexed, err := gc.RefIndexDigests(ctx, e.bucket)
	must(t, err)
	for k := range got {
		if strings.HasPrefix(k, gc.RefIndexKeyPrefix) {
			delete(got, k)
		}
	}
	live := map[digest.Digest]bool{}
	for _, x := range all {
		if x.deleted.IsZero() {
			live[x.img.digest()] = true
		}
	}
	for d := range live {
		if !indexed[d] {
			t.Errorf("the refs index lacks live manifest %s", d)
		}
		delete(indexed, d)
	}
	if len(indexed) > 0 {
		t.Errorf("the refs index holds %d manifests that are not live: %v", len(indexed), indexed)
	}
	var extra, missing []string
	for k := range got {
		if !want[k] {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if !got[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(extra)
	slices.Sort(missing)
	if len(extra) > 0 || len(missing) > 0 {
		t.Errorf("the bucket holds %d objects the live images do not need:\n%s\nand lacks %d they need:\n%s",
			len(extra), strings.Join(extra, "\n"), len(missing), strings.Join(missing, "\n"))
	}
}

// TestUploadCommitAgainstIntent: an upload of content that is stored but
// garbage (its old copy unreferenced) is committed while the collector
// holds an intent on it and then deletes the old copy. The commit waits
// for the intent, then writes the content from its parts (the old copy
// gone), and answers 201 for a blob that is really there. (The retry of a
// commit that sees the intent only after writing is not reached here: it
// needs the intent to land between two reads of one request.)
func TestUploadCommitAgainstIntent(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, 1, server.Options{})
	c := client{e.servers[0]}
	store := storage.New(e.bucket)
	content := randomBytes(300)
	d := digest.FromBytes(content)
	must(t, c.pushBlob(ctx, "old", content))
	must(t, store.DeleteBlob(ctx, "old", d)) // the stored copy is garbage now
	resp, _, err := c.do(ctx, "POST", "/v2/app/blobs/uploads/", nil, http.StatusAccepted)
	must(t, err)
	resp, _, err = c.do(ctx, "PATCH", resp.Header.Get("Location"), content, http.StatusAccepted)
	must(t, err)
	loc := resp.Header.Get("Location")
	must(t, store.PutIntent(ctx, storage.IntentKey(d), storage.Intent{Run: "test", Expires: time.Now().Add(time.Minute), Digests: []digest.Digest{d}}))
	done := make(chan error, 1)
	go func() {
		_, _, err := c.do(ctx, "PUT", loc+"&digest="+d.String(), nil, http.StatusCreated)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the commit answered (%v) while the collector held an intent on its content", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The collector deletes what it planned: the old copy (and the new
	// link the commit wrote, which its first mark did not see).
	must(t, e.bucket.Delete(ctx, storage.BlobKey(d)))
	_ = store.DeleteBlob(ctx, "app", d)
	must(t, store.DeleteIntent(ctx, storage.IntentKey(d)))
	must(t, <-done)
	_, got, err := c.do(ctx, "GET", "/v2/app/blobs/"+d.String(), nil, http.StatusOK)
	must(t, err)
	if digest.FromBytes(got) != d {
		t.Fatal("the committed blob has the wrong bytes")
	}
}
