package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err == nil && n > 0 {
		return n
	}
	return def
}

// post sends one request and checks its status.
func post(ctx context.Context, method, u string, body []byte, ct string, want int) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, u, resp.StatusCode, b)
	}
	return nil
}

// pushSmallImage pushes a config, one layer and a manifest under tag.
func pushSmallImage(ctx context.Context, base, repo, tag string) error {
	config, layer := make([]byte, 64), make([]byte, 256)
	_, _ = rand.Read(config)
	_, _ = rand.Read(layer)
	for _, b := range [][]byte{config, layer} {
		if err := post(ctx, "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), b, "application/octet-stream", http.StatusCreated); err != nil {
			return err
		}
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: 64},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: 256}}}
	m.SchemaVersion = 2
	body, _ := json.Marshal(m)
	return post(ctx, "PUT", base+"/v2/"+repo+"/manifests/"+tag, body, ocispec.MediaTypeImageManifest, http.StatusCreated)
}

// parallelDo runs f(i) for i in [0, n) on workers goroutines.
func parallelDo(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || first.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}

// BenchmarkGCSweep (make bench-gc): a versitygw bucket with
// BENCH_GC_BLOBS (default 10000) unreferenced blobs and BENCH_GC_IMAGES
// (default 1000) live images is collected by `registryd gc` while four
// clients push images; it reports the collection's wall time and the push
// rate during it against the rate without it. Run with -benchtime 1x.
func BenchmarkGCSweep(b *testing.B) {
	garbage, images := envInt("BENCH_GC_BLOBS", 10000), envInt("BENCH_GC_IMAGES", 1000)
	srv := storageservers.Start(b, storageservers.S3)
	reg := startRegistrydEnv(b, srv.URL, srv.EnvList())
	ctx := context.Background()
	start := time.Now()
	if err := parallelDo(images, 16, func(i int) error {
		return pushSmallImage(ctx, reg.url(), fmt.Sprintf("live/app%d", i%20), fmt.Sprintf("v%d", i))
	}); err != nil {
		b.Fatal(err)
	}
	if err := parallelDo(garbage, 16, func(i int) error {
		blob := make([]byte, 128)
		_, _ = rand.Read(blob)
		return post(ctx, "POST", reg.url()+"/v2/garbage/blobs/uploads/?digest="+digest.FromBytes(blob).String(), blob, "application/octet-stream", http.StatusCreated)
	}); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d images and %d unreferenced blobs in %s", images, garbage, time.Since(start).Round(time.Millisecond))
	time.Sleep(1100 * time.Millisecond) // past the collection's grace

	// pushers push images until stop is closed and count them.
	pushers := func(stop <-chan struct{}) (*atomic.Int64, func() error) {
		var n atomic.Int64
		var wg sync.WaitGroup
		var firstErr atomic.Value
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := pushSmallImage(ctx, reg.url(), fmt.Sprintf("busy/w%d", w), fmt.Sprintf("t%d-%d", i, time.Now().UnixNano())); err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					n.Add(1)
				}
			}()
		}
		return &n, func() error {
			wg.Wait()
			if err, ok := firstErr.Load().(error); ok {
				return err
			}
			return nil
		}
	}
	stop := make(chan struct{})
	unloaded, wait := pushers(stop)
	const window = 5 * time.Second
	time.Sleep(window)
	close(stop)
	if err := wait(); err != nil {
		b.Fatal(err)
	}
	unloadedRate := float64(unloaded.Load()) / window.Seconds()

	for b.Loop() {
		stop = make(chan struct{})
		loaded, wait := pushers(stop)
		gcStart := time.Now()
		cmd := exec.Command(registrydBin, "gc", "--storage", srv.URL, "--grace", "1s", fmt.Sprintf("--workers=%d", envInt("BENCH_GC_WORKERS", 16)))
		cmd.Env = append(os.Environ(), srv.EnvList()...)
		out, err := cmd.CombinedOutput()
		took := time.Since(gcStart)
		close(stop)
		if werr := wait(); werr != nil {
			b.Fatal(werr)
		}
		if err != nil {
			b.Fatalf("registryd gc: %v\n%s", err, out)
		}
		summary := strings.TrimSpace(string(out))
		b.Log(summary[strings.LastIndex(summary, "\n")+1:])
		loadedRate := float64(loaded.Load()) / took.Seconds()
		b.ReportMetric(took.Seconds(), "sweep-s")
		b.ReportMetric(unloadedRate, "pushes/s-unloaded")
		b.ReportMetric(loadedRate, "pushes/s-during-gc")
		b.ReportMetric(100*loadedRate/unloadedRate, "%-of-unloaded")
	}
	// Every live image still pulls (a sample).
	for i := 0; i < images; i += max(1, images/50) {
		if err := post(ctx, "GET", reg.url()+fmt.Sprintf("/v2/live/app%d/manifests/v%d", i%20, i), nil, "", http.StatusOK); err != nil {
			b.Error(err)
		}
	}
}
