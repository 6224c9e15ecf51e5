package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/gcreport"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// exe runs bin and returns its stdout; an error carries stderr. For
// goroutines, which may not call t.Fatal.
func exe(ctx context.Context, home, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// gcRun runs `registryd gc` over storage and returns its output lines.
func gcRun(t *testing.T, storage string, flags ...string) []string {
	t.Helper()
	out, err := exe(t.Context(), t.TempDir(), registrydBin, append([]string{"gc", "--storage", storage}, flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]))
	return strings.Split(strings.TrimSpace(out), "\n")
}

// imageBlobs is the manifest digest and every blob of image ref.
func imageBlobs(ctx context.Context, home, crane, ref string) ([]string, error) {
	m, err := exe(ctx, home, crane, "manifest", "--insecure", ref)
	if err != nil {
		return nil, err
	}
	var man ocispec.Manifest
	if err := json.Unmarshal([]byte(m), &man); err != nil {
		return nil, err
	}
	d, err := exe(ctx, home, crane, "digest", "--insecure", ref)
	if err != nil {
		return nil, err
	}
	out := []string{strings.TrimSpace(d), man.Config.Digest.String()}
	for _, l := range man.Layers {
		out = append(out, l.Digest.String())
	}
	return out, nil
}

// blobFiles is the digests stored under blobs/ of a file bucket.
func blobFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(dir, "blobs")
	_ = filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && !strings.HasSuffix(p, ".attrs") {
			rel, _ := filepath.Rel(root, p)
			out = append(out, strings.Replace(filepath.ToSlash(rel), "/", ":", 1))
		}
		return nil
	})
	slices.Sort(out)
	return out
}

// TestGCWhileCranePushes: three registryd processes over one bucket; crane
// pushes new images (with a shared layer), deletes some and pushes deleted
// ones again from saved tarballs, while `registryd gc` runs in a loop.
// Every crane command must succeed; afterwards every live image validates
// on every replica, and the bucket's blobs are exactly the live images'.
func TestGCWhileCranePushes(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	dir := t.TempDir()
	storage := "file://" + dir
	var procs []*registry
	for range 3 {
		procs = append(procs, startRegistryd(t, storage, "--gc-touch-interval=300ms"))
	}
	home := t.TempDir()
	shared := filepath.Join(home, "shared.tar")
	writeLayerTar(t, shared, map[string]string{"shared.txt": "in every image\n"})
	const (
		workers  = 3
		duration = 5 * time.Second
		grace    = "1s"
	)
	ctx := t.Context()
	stop := time.Now().Add(duration)
	type image struct {
		ref, saved string
		live       bool
	}
	var mu sync.Mutex
	var images []*image
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []*image
			for n := 0; time.Now().Before(stop); n++ {
				host := procs[(w+n)%len(procs)].host
				var err error
				switch {
				case n%3 == 2 && len(mine) > 0: // delete one, keeping it as a tarball
					x := mine[n%len(mine)]
					if !x.live {
						continue
					}
					var d string
					if d, err = exe(ctx, home, crane, "digest", "--insecure", x.ref); err == nil {
						x.saved = filepath.Join(home, fmt.Sprintf("w%d-%d.tar", w, n))
						if _, err = exe(ctx, home, crane, "pull", "--insecure", "--format=tarball", x.ref, x.saved); err == nil {
							_, err = exe(ctx, home, crane, "delete", "--insecure", strings.Split(x.ref, ":")[0]+":"+strings.Split(x.ref, ":")[1]+"@"+strings.TrimSpace(d))
						}
					}
					mu.Lock()
					x.live = false
					mu.Unlock()
				case n%3 == 1 && len(mine) > 0: // push a deleted one again
					var x *image
					for _, c := range mine {
						if !c.live && c.saved != "" {
							x = c
						}
					}
					if x == nil {
						continue
					}
					ref := fmt.Sprintf("%s/gc/w%d:again-%d", host, w, n)
					if _, err = exe(ctx, home, crane, "push", "--insecure", x.saved, ref); err == nil {
						mu.Lock()
						x.ref, x.live = ref, true
						mu.Unlock()
					}
				default: // a new image: the shared layer and one of its own
					layer := filepath.Join(home, fmt.Sprintf("w%d-%d-layer.tar", w, n))
					writeLayerTar(t, layer, map[string]string{"own.txt": fmt.Sprintf("worker %d image %d %d\n", w, n, time.Now().UnixNano())})
					ref := fmt.Sprintf("%s/gc/w%d:v%d", host, w, n)
					if _, err = exe(ctx, home, crane, "append", "--insecure", "-f", shared, "-f", layer, "-t", ref); err == nil {
						x := &image{ref: ref, live: true}
						mine = append(mine, x)
						mu.Lock()
						images = append(images, x)
						mu.Unlock()
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	runs := 0
	for time.Now().Before(stop) {
		gcRun(t, storage, "--grace", grace, "--delete-untagged", "--batch-size=4")
		runs++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	time.Sleep(1500 * time.Millisecond)
	gcRun(t, storage, "--grace", grace, "--delete-untagged")
	want := map[string]bool{}
	live := 0
	for _, x := range images {
		if !x.live {
			continue
		}
		live++
		_, path, _ := strings.Cut(x.ref, "/")
		p := procs[live%len(procs)]
		if _, err := exe(ctx, home, crane, "validate", "--insecure", "--remote", p.host+"/"+path); err != nil {
			t.Errorf("image %s on %s: %v", path, p.host, err)
		}
		blobs, err := imageBlobs(ctx, home, crane, x.ref)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blobs {
			want[b] = true
		}
	}
	var wantList []string
	for b := range want {
		wantList = append(wantList, b)
	}
	slices.Sort(wantList)
	if got := blobFiles(t, dir); !slices.Equal(got, wantList) {
		t.Errorf("the bucket holds blobs\n%s\nthe %d live images need\n%s", strings.Join(got, "\n"), live, strings.Join(wantList, "\n"))
	}
	t.Logf("%d images (%d live), %d collector runs while pushing", len(images), live, runs)
}

// TestGCRePushWithCrane is distribution #2094/#3254: after a collection
// deleted an image's blobs, crane pushing the same image again is not told
// "layer already exists" by a stale link: it uploads the layers and the
// image validates.
func TestGCRePushWithCrane(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	dir := t.TempDir()
	storage := "file://" + dir
	reg := startRegistryd(t, storage)
	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"a.txt": "collected, then pushed again\n"})
	ref := reg.host + "/gc/again:v1"
	run(t, home, crane, "append", "--insecure", "-f", layer, "-t", ref)
	saved := filepath.Join(home, "img.tar")
	run(t, home, crane, "pull", "--insecure", "--format=tarball", ref, saved)
	d := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", ref))
	run(t, home, crane, "delete", "--insecure", reg.host+"/gc/again@"+d)
	gcRun(t, storage, "--grace", "0")
	if left := blobFiles(t, dir); len(left) != 0 {
		t.Fatalf("blobs left after collecting the only image: %v", left)
	}
	run(t, home, crane, "push", "--insecure", saved, ref)
	run(t, home, crane, "validate", "--insecure", "--remote", ref)
}

// TestGCDryRunAndUploadsCLI: `registryd gc --dry-run` lists exactly what
// the run that follows deletes, and an upload past registryd's
// --upload-lifetime is deleted by it and its Location then refused.
func TestGCDryRunAndUploadsCLI(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	dir := t.TempDir()
	storage := "file://" + dir
	reg := startRegistryd(t, storage, "--upload-lifetime=1s")
	home := t.TempDir()
	for i, tag := range []string{"v1", "v1", "v2"} { // v1 twice: the first image is untagged
		layer := filepath.Join(home, fmt.Sprintf("l%d.tar", i))
		writeLayerTar(t, layer, map[string]string{"f.txt": fmt.Sprintf("image %d\n", i)})
		run(t, home, crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/gc/dry:"+tag)
	}
	d := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", reg.host+"/gc/dry:v2"))
	run(t, home, crane, "delete", "--insecure", reg.host+"/gc/dry@"+d)
	resp := do(t, "POST", reg.url()+"/v2/gc/dry/blobs/uploads/", nil, nil, http.StatusAccepted)
	resp = do(t, "PATCH", on(reg, resp.Header.Get("Location")), []byte("abandoned"), nil, http.StatusAccepted)
	loc := on(reg, resp.Header.Get("Location"))
	time.Sleep(1200 * time.Millisecond)

	keys := func(lines []string, verb string) []string {
		var out []string
		for _, l := range lines {
			if k, ok := strings.CutPrefix(l, verb+" "); ok {
				out = append(out, k)
			}
		}
		return out
	}
	flags := []string{"--grace", "0", "--delete-untagged", "--upload-lifetime", "1s"}
	// The report the operator reads into status.gc (--report-file, a
	// container's termination message in a cluster) counts what was listed.
	report := func(file string, want []string, dryRun bool) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > gcreport.MaxBytes {
			t.Errorf("report of %d bytes: the kubelet keeps %d", len(b), gcreport.MaxBytes)
		}
		rep, err := gcreport.Parse(string(b))
		if err != nil {
			t.Fatal(err)
		}
		blobs := 0
		for _, k := range want {
			if strings.HasPrefix(k, "blobs/") {
				blobs++
			}
		}
		if rep.DryRun != dryRun || rep.Failed || rep.DeletedObjects != int64(len(want)) || rep.Blobs != int64(blobs) ||
			rep.Manifests == 0 || rep.ReclaimedBytes == 0 || !strings.Contains(rep.Message, "gc: ") {
			t.Errorf("report %+v; the run listed %d keys, %d of them blobs", rep, len(want), blobs)
		}
	}
	dryReport, runReport := filepath.Join(t.TempDir(), "dry"), filepath.Join(t.TempDir(), "run")
	dry := keys(gcRun(t, storage, append(flags, "--dry-run", "--report-file", dryReport)...), "would delete")
	deleted := keys(gcRun(t, storage, append(flags, "--list", "--report-file", runReport)...), "deleted")
	if len(dry) == 0 || !slices.Equal(dry, deleted) {
		t.Errorf("dry run listed\n%s\nthe run deleted\n%s", strings.Join(dry, "\n"), strings.Join(deleted, "\n"))
	}
	report(dryReport, dry, true)
	report(runReport, deleted, false)
	if !slices.ContainsFunc(deleted, func(k string) bool { return strings.HasPrefix(k, "uploads/") }) {
		t.Errorf("the abandoned upload was not deleted: %v", deleted)
	}
	do(t, "PATCH", loc, []byte("more"), nil, http.StatusNotFound)
	run(t, home, crane, "validate", "--insecure", "--remote", reg.host+"/gc/dry:v1")
}

// TestGCReadsRepositoryStatus: in the kubernetes tag mode the tags that
// count are the Repositories' status. A tag in status whose journal entry
// is missing (the journal is written after status, and its write can fail)
// keeps its image when `registryd gc --registry` runs; a run that read the
// journal alone would delete it.
func TestGCReadsRepositoryStatus(t *testing.T) {
	t.Parallel()
	env := kubeEnv(t)
	crane := testutil.Client(t, "crane")
	const ns, registry = "gckube", "reg"
	if err := env.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(t.Context(), &v1.Registry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: registry},
		Spec: v1.RegistrySpec{Storage: v1.StorageSpec{URL: "mem://"}}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	storage := "file://" + dir
	kubeFlags := []string{"--registry", registry, "--namespace", ns, "--kubeconfig", kube.kubeconfig}
	reg := startRegistryd(t, storage, kubeFlags...)
	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"k.txt": "tagged in status only\n"})
	ref := reg.host + "/team/app:v1"
	run(t, home, crane, "append", "--insecure", "-f", layer, "-t", ref)
	if err := os.Remove(filepath.Join(dir, "repos", "team", "app", "_tags", "v1")); err != nil {
		t.Fatal(err)
	}
	journalOnly := gcRun(t, storage, "--grace", "0", "--delete-untagged", "--dry-run")
	if !slices.ContainsFunc(journalOnly, func(l string) bool { return strings.Contains(l, "_manifests/") }) {
		t.Fatalf("the journal alone should leave the manifest untagged: %v", journalOnly)
	}
	lines := gcRun(t, storage, append([]string{"--grace", "0", "--delete-untagged", "--list"}, kubeFlags...)...)
	for _, l := range lines {
		if strings.HasPrefix(l, "deleted ") {
			t.Errorf("%s, tagged in Repository status", l)
		}
	}
	run(t, home, crane, "validate", "--insecure", "--remote", ref)
	// Each run with --registry leaves an Event on the Registry.
	var events eventsv1.EventList
	if err := env.Client.List(t.Context(), &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range events.Items {
		if ev.Reason == "GarbageCollected" && ev.Regarding.Kind == "Registry" && ev.Regarding.Name == registry && strings.HasPrefix(ev.Note, "gc: deleted 0 manifests") {
			found = true
		}
	}
	if !found {
		t.Errorf("no GarbageCollected Event on the Registry among %d events", len(events.Items))
	}
}
