package gc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/gc"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/storage"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func index(children ...image) []byte {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, c := range children {
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: c.digest(), Size: int64(len(c.manifest()))})
	}
	b, _ := json.Marshal(idx)
	return b
}

// referrerOf is an artifact manifest (empty config, no layers) whose
// subject is d.
func referrerOf(d digest.Digest, size int64, note string) []byte {
	empty := []byte("{}")
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.sbom",
		Config:       ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: digest.FromBytes(empty), Size: 2},
		Layers:       []ocispec.Descriptor{},
		Subject:      &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: size},
		Annotations:  map[string]string{"note": note},
	}
	m.SchemaVersion = 2
	b, _ := json.Marshal(m)
	return b
}

// TestRunMarkSweep pushes content through registryd, ages the bucket past
// the grace, collects, and checks what pulls and what is gone.
func TestRunMarkSweep(t *testing.T) {
	type outcome struct {
		pull []string        // refs (repo@digest or repo:tag) that must pull completely
		gone []digest.Digest // blobs whose content must be gone from the bucket
		kept []digest.Digest // blobs whose content must stay
	}
	shared := randomBytes(300)
	tests := []struct {
		name  string
		opts  gc.Options
		age   time.Duration
		setup func(t *testing.T, ctx context.Context, c client) outcome
	}{
		{"a deleted manifest frees its own layers, not shared ones", gc.Options{Grace: time.Hour}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				a, b := newImage(shared), newImage(shared)
				must(t, c.push(ctx, "app", "a", a))
				must(t, c.push(ctx, "app", "b", b))
				must(t, c.deleteManifest(ctx, "app", b.digest()))
				return outcome{pull: []string{"app:a"}, gone: []digest.Digest{digest.FromBytes(b.layers[1]), digest.FromBytes(b.config), b.digest()},
					kept: []digest.Digest{digest.FromBytes(shared), a.digest()}}
			}},
		{"untagged manifests stay without deleteUntagged", gc.Options{Grace: time.Hour}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				old, cur := newImage(), newImage()
				must(t, c.push(ctx, "app", "latest", old))
				must(t, c.push(ctx, "app", "latest", cur))
				return outcome{pull: []string{"app:latest", "app@" + old.digest().String()}, kept: []digest.Digest{digest.FromBytes(old.layers[0])}}
			}},
		{"deleteUntagged frees an untagged image", gc.Options{Grace: time.Hour, DeleteUntagged: true}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				old, cur := newImage(shared), newImage(shared)
				must(t, c.push(ctx, "app", "latest", old))
				must(t, c.push(ctx, "app", "latest", cur))
				return outcome{pull: []string{"app:latest"}, gone: []digest.Digest{old.digest(), digest.FromBytes(old.layers[1])},
					kept: []digest.Digest{digest.FromBytes(shared)}}
			}},
		{"an untagged image inside the untagged delay stays", gc.Options{Grace: time.Hour, DeleteUntagged: true, UntaggedDelay: 3 * time.Hour}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				old, cur, orphan := newImage(shared), newImage(shared), randomBytes(100)
				must(t, c.push(ctx, "app", "latest", old))
				must(t, c.push(ctx, "app", "latest", cur))
				must(t, c.pushBlob(ctx, "app", orphan)) // the grace alone decides for blobs
				return outcome{pull: []string{"app:latest", "app@" + old.digest().String()}, kept: []digest.Digest{old.digest(), digest.FromBytes(old.layers[1])},
					gone: []digest.Digest{digest.FromBytes(orphan)}}
			}},
		{"an untagged image past the untagged delay goes", gc.Options{Grace: time.Hour, DeleteUntagged: true, UntaggedDelay: 3 * time.Hour}, 4 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				old, cur := newImage(shared), newImage(shared)
				must(t, c.push(ctx, "app", "latest", old))
				must(t, c.push(ctx, "app", "latest", cur))
				return outcome{pull: []string{"app:latest"}, gone: []digest.Digest{old.digest(), digest.FromBytes(old.layers[1])},
					kept: []digest.Digest{digest.FromBytes(shared)}}
			}},
		{"the grace keeps fresh garbage", gc.Options{Grace: time.Hour, DeleteUntagged: true}, 0,
			func(t *testing.T, ctx context.Context, c client) outcome {
				b := newImage()
				must(t, c.push(ctx, "app", "b", b))
				must(t, c.deleteManifest(ctx, "app", b.digest()))
				must(t, c.pushBlob(ctx, "app", b.layers[0]))
				return outcome{kept: []digest.Digest{b.digest(), digest.FromBytes(b.layers[0])}}
			}},
		{"a blob no manifest names is freed", gc.Options{Grace: time.Hour}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				orphan := randomBytes(100)
				must(t, c.pushBlob(ctx, "app", orphan))
				return outcome{gone: []digest.Digest{digest.FromBytes(orphan)}}
			}},
		{"an index keeps its children, a subject its referrers", gc.Options{Grace: time.Hour, DeleteUntagged: true}, 2 * time.Hour,
			func(t *testing.T, ctx context.Context, c client) outcome {
				c1, c2, lone := newImage(), newImage(shared), newImage()
				for _, img := range []image{c1, c2, lone} {
					must(t, c.push(ctx, "app", img.digest().String(), img))
				}
				idx := index(c1, c2)
				must(t, c.putManifest(ctx, "app", "multi", ocispec.MediaTypeImageIndex, idx))
				must(t, c.pushBlob(ctx, "app", []byte("{}")))
				ref := referrerOf(c1.digest(), int64(len(c1.manifest())), "kept")
				orphanRef := referrerOf(lone.digest(), int64(len(lone.manifest())), "gone")
				for _, r := range [][]byte{ref, orphanRef} {
					must(t, c.putManifest(ctx, "app", digest.FromBytes(r).String(), ocispec.MediaTypeImageManifest, r))
				}
				return outcome{
					pull: []string{"app@" + c1.digest().String(), "app@" + c2.digest().String()},
					gone: []digest.Digest{lone.digest(), digest.FromBytes(lone.layers[0]), digest.FromBytes(orphanRef)},
					kept: []digest.Digest{digest.FromBytes(idx), digest.FromBytes(ref), digest.FromBytes([]byte("{}"))},
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t, 1, server.Options{})
			c := client{e.servers[0]}
			want := tt.setup(t, ctx, c)
			e.age(t, tt.age)
			rep, err := gc.Run(ctx, e.bucket, tt.opts)
			must(t, err)
			t.Log(rep.Summary())
			for _, ref := range want.pull {
				repo, r, ok := strings.Cut(ref, "@")
				if !ok {
					repo, r, _ = strings.Cut(ref, ":")
				}
				if err := c.pull(ctx, repo, r); err != nil {
					t.Errorf("pull %s after gc: %v", ref, err)
				}
			}
			keys := e.keys(t)
			for _, d := range want.gone {
				if keys[storage.BlobKey(d)] {
					t.Errorf("%s survived the collection", d)
				}
				for k := range keys {
					if strings.HasSuffix(k, d.Encoded()) {
						t.Errorf("%s survived the collection", k)
					}
				}
			}
			for _, d := range want.kept {
				if !keys[storage.BlobKey(d)] {
					t.Errorf("%s was collected", d)
				}
			}
			if len(want.gone) == 0 && len(rep.Deleted) > 0 {
				t.Errorf("deleted %v, want nothing", rep.Deleted)
			}
		})
	}
}

// TestDryRunMatchesRun: a dry run lists exactly what the real run that
// follows deletes.
func TestDryRunMatchesRun(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, 1, server.Options{})
	c := client{e.servers[0]}
	shared := randomBytes(200)
	var doomed []image
	for i := range 4 {
		img := newImage(shared)
		must(t, c.push(ctx, "team/app", "v1", img)) // each push untags the last
		if i%2 == 0 {
			doomed = append(doomed, img)
		}
	}
	must(t, c.deleteManifest(ctx, "team/app", doomed[0].digest()))
	must(t, c.pushBlob(ctx, "other", randomBytes(50)))
	resp, _, err := c.do(ctx, "POST", "/v2/other/blobs/uploads/", nil, http.StatusAccepted)
	must(t, err)
	_, _, err = c.do(ctx, "PATCH", resp.Header.Get("Location"), randomBytes(10), http.StatusAccepted)
	must(t, err)
	e.age(t, 48*time.Hour)
	opts := gc.Options{Grace: time.Hour, DeleteUntagged: true, DryRun: true}
	dry, err := gc.Run(ctx, e.bucket, opts)
	must(t, err)
	if len(dry.Deleted) == 0 {
		t.Fatal("the dry run found nothing")
	}
	if got := e.keys(t); len(got) == 0 || !got[dry.Deleted[0]] {
		t.Fatalf("the dry run deleted %s", dry.Deleted[0])
	}
	opts.DryRun = false
	real, err := gc.Run(ctx, e.bucket, opts)
	must(t, err)
	if !slices.Equal(dry.Deleted, real.Deleted) {
		t.Errorf("dry run listed %d keys:\n%s\nthe run deleted %d:\n%s", len(dry.Deleted), strings.Join(dry.Deleted, "\n"),
			len(real.Deleted), strings.Join(real.Deleted, "\n"))
	}
	if dry.Uploads == 0 || dry.Manifests == 0 || dry.Blobs == 0 || dry.LayerLinks == 0 {
		t.Errorf("dry run %s: want every kind", dry.Summary())
	}
	// The physical size both report is what a walk of the bucket finds.
	var blobs int
	var stored int64
	for it := e.bucket.List(&blob.ListOptions{Prefix: "blobs/"}); ; {
		o, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		must(t, err)
		blobs++
		stored += o.Size
	}
	for _, rep := range []gc.Report{dry, real} {
		if rep.StoredBlobs != blobs || rep.StoredBytes != stored {
			t.Errorf("dry run %v: %d blobs of %d bytes stored; the bucket holds %d of %d", rep.DryRun, rep.StoredBlobs, rep.StoredBytes, blobs, stored)
		}
	}
	must(t, c.pull(ctx, "team/app", "v1"))
}

// TestAbandonedUpload: an upload past its lifetime is deleted by the next
// run and its token refused; a younger one is left alone.
func TestAbandonedUpload(t *testing.T) {
	tests := []struct {
		name     string
		lifetime time.Duration
		wantGone bool
	}{
		{"past its lifetime", 300 * time.Millisecond, true},
		{"within its lifetime", time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			e := newEnv(t, 1, server.Options{UploadLifetime: tt.lifetime})
			c := client{e.servers[0]}
			resp, _, err := c.do(ctx, "POST", "/v2/app/blobs/uploads/", nil, http.StatusAccepted)
			must(t, err)
			resp, _, err = c.do(ctx, "PATCH", resp.Header.Get("Location"), randomBytes(10), http.StatusAccepted)
			must(t, err)
			loc := resp.Header.Get("Location")
			time.Sleep(400 * time.Millisecond)
			rep, err := gc.Run(ctx, e.bucket, gc.Options{NoGrace: true, UploadLifetime: tt.lifetime})
			must(t, err)
			left := 0
			for k := range e.keys(t) {
				if strings.HasPrefix(k, "uploads/") {
					left++
				}
			}
			if gone := left == 0; gone != tt.wantGone || (rep.Uploads > 0) != tt.wantGone {
				t.Errorf("%d upload objects left, %d deleted; want gone=%v", left, rep.Uploads, tt.wantGone)
			}
			_, _, err = c.do(ctx, "PATCH", loc, randomBytes(10), http.StatusAccepted)
			var ae *apiError
			switch {
			case tt.wantGone && (!errors.As(err, &ae) || ae.status != http.StatusNotFound || ae.code != "BLOB_UPLOAD_UNKNOWN"):
				t.Errorf("resuming an expired upload: %v, want 404 BLOB_UPLOAD_UNKNOWN", err)
			case !tt.wantGone && err != nil:
				t.Errorf("resuming a live upload: %v", err)
			}
		})
	}
}

// TestRePushAfterCollection is the stale-link case of distribution #2094
// and #3254: once a run deleted an image's layers, a client asking whether
// they exist is told no, pushes them again, and the image pulls.
func TestRePushAfterCollection(t *testing.T) {
	ctx := t.Context()
	e, c, img := deletedImage(t)
	rep, err := gc.Run(ctx, e.bucket, gc.Options{Grace: time.Hour})
	must(t, err)
	if rep.Blobs != 3 {
		t.Fatalf("%s: want the manifest, config and layer collected", rep.Summary())
	}
	for _, b := range img.blobs() {
		ok, err := c.exists(ctx, "app", digest.FromBytes(b))
		must(t, err)
		if ok {
			t.Fatalf("HEAD says collected blob %s exists", digest.FromBytes(b))
		}
	}
	must(t, c.push(ctx, "app", "v1", img))
	must(t, c.pull(ctx, "app", "v1"))
}

// TestExpiredIntentsDefer: a batch whose intents expire before its deletes
// are sent (a slow run: here a pause longer than IntentTTL) deletes
// nothing, reports the garbage as left for the next run, and is no error;
// the next run collects it. (It was "context deadline exceeded" from the
// whole run, found by make test-gc-torture on a loaded machine.)
func TestExpiredIntentsDefer(t *testing.T) {
	ctx := t.Context()
	e, _, _ := deletedImage(t)
	rep, err := gc.Run(ctx, e.bucket, gc.WithPause(gc.Options{Grace: time.Hour, IntentTTL: time.Nanosecond}, 200*time.Millisecond))
	if err != nil {
		t.Fatalf("a run whose intents expired: %v", err)
	}
	if len(rep.Deleted) != 0 || rep.Deferred == 0 {
		t.Fatalf("%s: want nothing deleted and the garbage deferred", rep.Summary())
	}
	rep, err = gc.Run(ctx, e.bucket, gc.Options{Grace: time.Hour})
	must(t, err)
	if rep.Blobs != 3 || rep.Deferred != 0 {
		t.Fatalf("the next run: %s; want the manifest, config and layer collected", rep.Summary())
	}
}

// deletedImage is one replica over a bucket holding one image pushed as
// app:v1, deleted, and aged two hours: garbage past an hour's grace.
func deletedImage(t *testing.T) (*env, client, image) {
	t.Helper()
	e := newEnv(t, 1, server.Options{})
	c := client{e.servers[0]}
	img := newImage()
	must(t, c.push(t.Context(), "app", "v1", img))
	must(t, c.deleteManifest(t.Context(), "app", img.digest()))
	e.age(t, 2*time.Hour)
	return e, c, img
}

// TestLockKeepsRunsApart: a second run while one holds the lock refuses.
func TestLockKeepsRunsApart(t *testing.T) {
	e := newEnv(t, 0, server.Options{})
	ctx := t.Context()
	must(t, e.bucket.WriteAll(ctx, storage.GCLockKey, []byte(`{"run":"other","expires":"`+time.Now().Add(time.Minute).Format(time.RFC3339Nano)+`"}`), nil))
	if _, err := gc.Run(ctx, e.bucket, gc.Options{}); !errors.Is(err, gc.ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
	must(t, e.bucket.WriteAll(ctx, storage.GCLockKey, []byte(`{"run":"dead","expires":"`+time.Now().Add(-time.Minute).Format(time.RFC3339Nano)+`"}`), nil))
	if _, err := gc.Run(ctx, e.bucket, gc.Options{}); err != nil {
		t.Fatalf("an expired lock still kept the run out: %v", err)
	}
}

// TestLockIsExclusive: runs that start together on one bucket, each with
// its own *blob.Bucket as separate processes would have, get the lock once
// between them. fileblob's IfNotExist is a stat before a rename, which two
// writers can both pass.
func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	const contenders = 8
	for round := range 60 {
		var start, done sync.WaitGroup
		start.Add(1)
		var won atomic.Int64
		releases := make(chan func(), contenders)
		for i := range contenders {
			done.Add(1)
			go func() {
				defer done.Done()
				b, err := bucket.Open(t.Context(), "file://"+dir, bucket.Options{})
				if err != nil {
					t.Error(err)
					return
				}
				t.Cleanup(func() { _ = b.Close() }) // after the releases
				start.Wait()
				release, err := gc.TakeLock(t.Context(), b, fmt.Sprintf("run-%d-%d", round, i))
				switch {
				case err == nil:
					won.Add(1)
					releases <- release
				case !errors.Is(err, gc.ErrBusy):
					t.Errorf("taking the lock: %v", err)
				}
			}()
		}
		start.Done()
		done.Wait()
		close(releases)
		if n := won.Load(); n != 1 {
			t.Fatalf("round %d: %d runs took the lock, want 1", round, n)
		}
		for r := range releases {
			r()
		}
	}
}

// TestDeadMirrorLeases: a mirror fetch lease left by a replica that died
// (expired, not rewritten within the grace) is removed, in the dry run's
// list and then by the run; a lease rewritten within the grace, or not yet
// expired, is a fetch that may be in progress and stays.
func TestDeadMirrorLeases(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, 0, server.Options{})
	lease := func(expires time.Time) []byte {
		return []byte(`{"holder":"r1","expires":"` + expires.Format(time.RFC3339Nano) + `"}`)
	}
	key := func(hex string) string { return storage.MirrorLeasesPrefix + "sha256/" + strings.Repeat(hex, 64) }
	dead, live := key("a"), key("b")
	must(t, e.bucket.WriteAll(ctx, dead, lease(time.Now().Add(-90*time.Minute)), nil))
	must(t, e.bucket.WriteAll(ctx, live, lease(time.Now().Add(3*time.Hour)), nil)) // a clock ahead, or a long fetch
	e.age(t, 2*time.Hour)
	fresh := key("c") // expired, but written moments ago: a holder may be rewriting it
	must(t, e.bucket.WriteAll(ctx, fresh, lease(time.Now().Add(-time.Second)), nil))

	dry, err := gc.Run(ctx, e.bucket, gc.Options{Grace: time.Hour, DryRun: true})
	must(t, err)
	rep, err := gc.Run(ctx, e.bucket, gc.Options{Grace: time.Hour})
	must(t, err)
	for _, r := range []gc.Report{dry, rep} {
		if !slices.Equal(r.Deleted, []string{dead}) || r.MirrorLeases != 1 {
			t.Errorf("dry run %v: %s deleted %v, want only the dead lease", r.DryRun, r.Summary(), r.Deleted)
		}
	}
	keys := e.keys(t)
	if keys[dead] || !keys[live] || !keys[fresh] {
		t.Fatalf("after the run: dead lease there %v, live %v, fresh %v", keys[dead], keys[live], keys[fresh])
	}
}

// TestRefIndex: a run reads only the manifests no earlier run has read
// (the refs index, refindex.go), keeps everything live whatever the index
// holds or lacks, writes nothing in a dry run, and drops a deleted
// manifest from the index once it is collected.
func TestRefIndex(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, 1, server.Options{})
	c := client{e.servers[0]}
	shared := randomBytes(64)
	imgs := []image{newImage(shared), newImage(shared), newImage()}
	for i, img := range imgs {
		must(t, c.push(ctx, "app", fmt.Sprintf("v%d", i), img))
	}
	e.age(t, 2*time.Hour)
	run := func(what string, wantRead int, o gc.Options) gc.Report {
		t.Helper()
		o.Grace, o.DeleteUntagged = time.Hour, true
		rep, err := gc.Run(ctx, e.bucket, o)
		must(t, err)
		if rep.ManifestsRead != wantRead {
			t.Errorf("%s: %d manifests read, want %d (%s)", what, rep.ManifestsRead, wantRead, rep.Summary())
		}
		for i, img := range imgs {
			if img.config == nil {
				continue // deleted below
			}
			if err := c.pull(ctx, "app", fmt.Sprintf("v%d", i)); err != nil {
				t.Errorf("%s: pull v%d: %v", what, i, err)
			}
		}
		return rep
	}
	indexed := func() map[digest.Digest]bool {
		t.Helper()
		got, err := gc.RefIndexDigests(ctx, e.bucket)
		must(t, err)
		return got
	}
	run("a dry run with no index", 3, gc.Options{DryRun: true})
	if n := len(indexed()); n != 0 {
		t.Fatalf("a dry run wrote %d index entries", n)
	}
	run("the first run", 3, gc.Options{})
	if got := indexed(); len(got) != 3 || !got[imgs[0].digest()] || !got[imgs[2].digest()] {
		t.Fatalf("index after the first run: %v", got)
	}
	run("the second run", 0, gc.Options{})
	run("a dry run", 0, gc.Options{DryRun: true})

	// A new image is read once.
	imgs = append(imgs, newImage(shared))
	must(t, c.push(ctx, "app", "v3", imgs[3]))
	run("after a push", 1, gc.Options{})
	run("once more", 0, gc.Options{})

	// An index object that cannot be read costs reads, not content.
	sh := imgs[0].digest().Encoded()[:1]
	must(t, e.bucket.WriteAll(ctx, gc.RefIndexKeyPrefix+sh, []byte("not gzip"), nil))
	wantRead := 0
	for _, img := range imgs {
		if img.digest().Encoded()[:1] == sh {
			wantRead++
		}
	}
	run("over a corrupt index object", wantRead, gc.Options{})
	run("after it was rewritten", 0, gc.Options{})

	// A deleted manifest leaves the index when it is collected.
	gone := imgs[1]
	must(t, c.deleteManifest(ctx, "app", gone.digest()))
	imgs[1] = image{}
	e.age(t, 2*time.Hour)
	run("collecting a deleted image", 0, gc.Options{})
	if got := indexed(); got[gone.digest()] || len(got) != 3 {
		t.Errorf("index after collecting %s: %v", gone.digest(), got)
	}
	// Its shared layer stays: the other images name it.
	keys := e.keys(t)
	if !keys[storage.BlobKey(digest.FromBytes(shared))] {
		t.Error("the shared layer was collected")
	}
}
