package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// gcOptions shape the garbage-collection workload (issue 17): a bucket
// holding images live images and garbage unreferenced blobs is collected
// by `registryd gc` while clients push and pull, next to distribution's
// offline `registry garbage-collect` on the same content.
type gcOptions struct {
	images, garbage int           // BENCH_GC_IMAGES, BENCH_GC_BLOBS
	clients         int           // BENCH_GC_CLIENTS: pushers, and as many pullers
	window          time.Duration // BENCH_GC_WINDOW_SECONDS: the unloaded measurement
	rounds          int           // BENCH_GC_ROUNDS: sweeps, each of the same content under its own prefix
	workers         int           // BENCH_GC_WORKERS: registryd gc --workers
	// s3URL and s3Env: the versitygw bucket (hack/storage-servers.sh
	// start, from hack/bench.sh).
	s3URL string
	s3Env []string
}

// gcResult is what the GC workload measured.
type gcResult struct {
	seedDistribution    time.Duration
	rounds              []gcRun
	distributionGC      time.Duration
	distributionDeleted int
}

// gcRun is one round: its seeding, and a sweep under client load.
type gcRun struct {
	seed             time.Duration
	sweep            time.Duration
	summary          string
	unloaded, loaded rates
	cpu              string // where the CPU went during the sweep
	// again: a second run on the same bucket, no clients; the manifests
	// it read and those its refs index held.
	again                   time.Duration
	againRead, againIndexed int
}

// keptPush and keptPull: the clients' rates during the sweep, in % of
// their unloaded rates.
func (r gcRun) keptPush() float64 { return 100 * r.loaded.push / r.unloaded.push }
func (r gcRun) keptPull() float64 { return 100 * r.loaded.pull / r.unloaded.pull }

// rates are client operations per second: image pushes, image pulls.
type rates struct{ push, pull float64 }

// blobBytes is a fresh random blob and its digest.
func blobBytes(n int) ([]byte, string) {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

// gcClient pushes and pulls with plain HTTP requests: a monolithic upload
// is POST then PUT ?digest= (what both registries support), an image is a
// config, one layer and a manifest.
type gcClient struct {
	base string
	hc   *http.Client
	// single: upload with one POST ?digest= (registryd; distribution
	// answers it with an upload session).
	single bool
}

func (c gcClient) do(ctx context.Context, method, path string, body []byte, ct string, want int) (*http.Response, []byte, error) {
	u := path
	if !strings.HasPrefix(u, "http") {
		u = c.base + path
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if method == http.MethodGet && strings.Contains(path, "/manifests/") {
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != want {
		return nil, nil, fmt.Errorf("%s %s: %d %.200s", method, path, resp.StatusCode, b)
	}
	return resp, b, nil
}

func (c gcClient) upload(ctx context.Context, repo string, b []byte, d string) error {
	if c.single {
		_, _, err := c.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d, b, "application/octet-stream", http.StatusCreated)
		return err
	}
	resp, _, err := c.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, "", http.StatusAccepted)
	if err != nil {
		return err
	}
	loc := resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if !strings.HasPrefix(loc, "http") {
		loc = c.base + loc
	}
	_, _, err = c.do(ctx, http.MethodPut, loc+sep+"digest="+d, b, "application/octet-stream", http.StatusCreated)
	return err
}

// pushImage pushes a fresh small image (64-byte config, 256-byte layer)
// under repo:tag.
func (c gcClient) pushImage(ctx context.Context, repo, tag string) error {
	config, cd := blobBytes(64)
	layer, ld := blobBytes(256)
	for _, b := range []struct {
		data []byte
		d    string
	}{{config, cd}, {layer, ld}} {
		if err := c.upload(ctx, repo, b.data, b.d); err != nil {
			return err
		}
	}
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}},
	})
	_, _, err := c.do(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, m, "application/vnd.oci.image.manifest.v1+json", http.StatusCreated)
	return err
}

// pullImage reads repo:tag's manifest, then its config and layer.
func (c gcClient) pullImage(ctx context.Context, repo, tag string) error {
	_, b, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/manifests/"+tag, nil, "", http.StatusOK)
	if err != nil {
		return err
	}
	var m struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for _, d := range append([]string{m.Config.Digest}, m.Layers[0].Digest) {
		if _, _, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/"+d, nil, "", http.StatusOK); err != nil {
			return err
		}
	}
	return nil
}

// liveRef names live image i: 20 repositories, one tag each.
func liveRef(i int) (repo, tag string) {
	return fmt.Sprintf("live/app%02d", i%20), fmt.Sprintf("v%d", i)
}

// seedGC pushes the live images and the unreferenced blobs, concurrently.
func seedGC(ctx context.Context, c gcClient, o gcOptions) (time.Duration, error) {
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range o.images + o.garbage {
		g.Go(func() error {
			if i < o.images {
				repo, tag := liveRef(i)
				return c.pushImage(gctx, repo, tag)
			}
			b, d := blobBytes(128)
			return c.upload(gctx, "garbage/blobs", b, d)
		})
	}
	err := g.Wait()
	return time.Since(start), err
}

// clientLoad runs n pushers (fresh images) and n pullers (live images)
// until stop, and returns their rates over the time they ran.
func clientLoad(ctx context.Context, c gcClient, n, images int, stop <-chan struct{}) func() (rates, error) {
	var pushes, pulls atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	loop := func(op func(i int) error, count *atomic.Int64) {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := op(i); err != nil {
				first.CompareAndSwap(nil, err)
				return
			}
			count.Add(1)
		}
	}
	for w := range n {
		wg.Add(2)
		go loop(func(i int) error {
			return c.pushImage(ctx, fmt.Sprintf("busy/w%d", w), fmt.Sprintf("t%d-%d", i, time.Now().UnixNano()))
		}, &pushes)
		go loop(func(i int) error {
			repo, tag := liveRef((w*7919 + i*104729) % images)
			return c.pullImage(ctx, repo, tag)
		}, &pulls)
	}
	return func() (rates, error) {
		wg.Wait()
		took := time.Since(start).Seconds()
		if err, ok := first.Load().(error); ok {
			return rates{}, err
		}
		return rates{push: float64(pushes.Load()) / took, pull: float64(pulls.Load()) / took}, nil
	}
}

// startRegistrydOn starts registryd on the given storage URL.
func startRegistrydOn(ctx context.Context, bins binaries, workDir, storage string, env []string, args ...string) (*server, error) {
	dir, err := os.MkdirTemp(workDir, "registryd-gc-")
	if err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{kind: registryd, dir: dir, addr: addr, waitErr: make(chan error, 1)}
	if s.debugAddr, err = freePort(); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bins.Registryd, "--addr", addr, "--debug-addr", s.debugAddr, "--pprof", "--storage", storage, "--auth", "none")
	s.cmd.Args = append(s.cmd.Args, args...)
	s.cmd.Env = append(append(os.Environ(), "STEVEDORE_HTTP_SECRET=bench"), env...)
	return s, s.start(ctx)
}

// gcDeletedBlobs reads the blob count off `registryd gc`'s summary line.
var gcDeletedBlobs = regexp.MustCompile(`, (\d+) blobs,`)

// gcWorkload measures registryd gc on versitygw over rounds, each on the
// same content under its own key prefix, then distribution's offline
// garbage-collect on its filesystem driver.
func gcWorkload(ctx context.Context, o options) (gcResult, error) {
	var res gcResult
	for i := range o.gc.rounds {
		r, err := gcRound(ctx, o, fmt.Sprintf("round%d/", i+1))
		if err != nil {
			return res, fmt.Errorf("round %d: %w", i+1, err)
		}
		res.rounds = append(res.rounds, r)
	}
	if os.Getenv("BENCH_GC_DISTRIBUTION") == "0" {
		return res, nil
	}
	if err := distributionGC(ctx, o, &res); err != nil {
		return res, err
	}
	return res, nil
}

// gcRound seeds a registryd on the bucket's prefix, then measures the
// clients unloaded, during one `registryd gc`, and unloaded again. Each
// round starts from the same content: a round on what earlier rounds'
// pushers left would mark more manifests.
func gcRound(ctx context.Context, o options, prefix string) (gcRun, error) {
	var r gcRun
	g := o.gc
	s, err := startRegistrydOn(ctx, o.bins, o.workDir, g.s3URL, g.s3Env, "--storage-prefix", prefix)
	if err != nil {
		return r, err
	}
	defer s.stop()
	tr := transport()
	defer tr.CloseIdleConnections()
	c := gcClient{base: s.URL(), hc: &http.Client{Transport: tr}, single: true}
	logf("gc: %sseeding registryd on versitygw with %d images and %d unreferenced blobs", prefix, g.images, g.garbage)
	if r.seed, err = seedGC(ctx, c, g); err != nil {
		return r, err
	}
	logf("gc: seeded in %s", r.seed.Round(time.Millisecond))
	// The seed's dirty pages go to disk now, not inside a measured window:
	// their writeback slowed versitygw's fsyncs in whichever window it
	// fell (rates 15-25 % lower in the runs where it did).
	syscall.Sync()
	time.Sleep(1100 * time.Millisecond) // past the collection's grace

	before, err := unloadedRates(ctx, c, g)
	if err != nil {
		return r, fmt.Errorf("unloaded clients: %w", err)
	}
	logf("gc: unloaded: %.1f pushes/s, %.1f pulls/s", before.push, before.pull)

	stop := make(chan struct{})
	wait := clientLoad(ctx, c, g.clients, g.images, stop)
	gcCmd := func() *exec.Cmd {
		cmd := exec.CommandContext(ctx, o.bins.Registryd, "gc", "--storage", g.s3URL, "--storage-prefix", prefix, "--grace", "1s", "--workers", strconv.Itoa(g.workers))
		if pace := os.Getenv("BENCH_GC_PACE"); pace != "" { // else registryd gc's default
			cmd.Args = append(cmd.Args, "--pace", pace)
		}
		cmd.Env = append(os.Environ(), g.s3Env...)
		return cmd
	}
	cmd := gcCmd()
	// Where the CPU goes during the sweep: the collector, registryd,
	// versitygw, the clients (this process).
	gw := pidsNamed("versitygw")
	cpu0 := [3]time.Duration{procCPU(s.cmd.Process.Pid), cpuOfAll(gw), procCPU(os.Getpid())}
	start := time.Now()
	out, gcErr := cmd.CombinedOutput()
	r.sweep = time.Since(start)
	if cmd.ProcessState != nil {
		r.cpu = fmt.Sprintf("collector %.1fs, registryd %.1fs, versitygw %.1fs, clients %.1fs of CPU in %.1fs",
			(cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(), (procCPU(s.cmd.Process.Pid) - cpu0[0]).Seconds(),
			(cpuOfAll(gw) - cpu0[1]).Seconds(), (procCPU(os.Getpid()) - cpu0[2]).Seconds(), r.sweep.Seconds())
		logf("gc: during the sweep: %s", r.cpu)
	}
	close(stop)
	r.loaded, err = wait()
	if gcErr != nil {
		return r, fmt.Errorf("registryd gc: %w\n%s", gcErr, lastLines(string(out), 20))
	}
	if err != nil {
		return r, fmt.Errorf("clients during gc: %w", err)
	}
	r.summary = strings.TrimSpace(lastLines(string(out), 1))
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "gc: phase") || strings.Contains(l, "gc: batch") || strings.Contains(l, "gc: manifests") {
			logf("%s", l)
		}
	}
	logf("gc: %s", r.summary)
	logf("gc: during the sweep: %.1f pushes/s, %.1f pulls/s", r.loaded.push, r.loaded.pull)
	m := gcDeletedBlobs.FindStringSubmatch(r.summary)
	if m == nil {
		return r, fmt.Errorf("registryd gc printed no summary: %s", r.summary)
	}
	if n, _ := strconv.Atoi(m[1]); n < g.garbage {
		return r, fmt.Errorf("registryd gc deleted fewer than %d blobs: %s", g.garbage, r.summary)
	}
	for i := 0; i < g.images; i += max(1, g.images/100) {
		repo, tag := liveRef(i)
		if err := c.pullImage(ctx, repo, tag); err != nil {
			return r, fmt.Errorf("after gc: %w", err)
		}
	}

	// The unloaded rates again after the sweep: the machine's other load
	// drifts, and the mean of before and after is fairer than either.
	after, err := unloadedRates(ctx, c, g)
	if err != nil {
		return r, fmt.Errorf("unloaded clients after gc: %w", err)
	}
	logf("gc: unloaded after: %.1f pushes/s, %.1f pulls/s", after.push, after.pull)
	r.unloaded = rates{push: (before.push + after.push) / 2, pull: (before.pull + after.pull) / 2}

	// A scheduled run on the same bucket, now with the refs index the
	// first wrote (docs/gc.md), and no clients: what it still reads.
	again := gcCmd()
	start = time.Now()
	out, err = again.CombinedOutput()
	r.again = time.Since(start)
	if err != nil {
		return r, fmt.Errorf("registryd gc, second run: %w\n%s", err, lastLines(string(out), 20))
	}
	if m := gcManifestsLine.FindStringSubmatch(string(out)); m != nil {
		r.againRead, _ = strconv.Atoi(m[1])
		r.againIndexed, _ = strconv.Atoi(m[2])
	}
	logf("gc: second run (no clients) in %s: manifests read %d, from the refs index %d", r.again.Round(time.Millisecond), r.againRead, r.againIndexed)
	return r, nil
}

var gcManifestsLine = regexp.MustCompile(`msg="gc: manifests" read=(\d+) indexed=(\d+)`)

// unloadedRates runs the clients alone for the window.
func unloadedRates(ctx context.Context, c gcClient, g gcOptions) (rates, error) {
	stop := make(chan struct{})
	wait := clientLoad(ctx, c, g.clients, g.images, stop)
	time.Sleep(g.window)
	close(stop)
	return wait()
}

// distributionGC seeds distribution (filesystem driver) with the same
// content, stops it, and times `registry garbage-collect` on it.
func distributionGC(ctx context.Context, o options, res *gcResult) error {
	s, err := startServer(ctx, distribution, o.bins, o.workDir)
	if err != nil {
		return err
	}
	defer s.stop()
	tr := transport()
	defer tr.CloseIdleConnections()
	c := gcClient{base: s.URL(), hc: &http.Client{Transport: tr}}
	logf("gc: seeding distribution (filesystem) with %d images and %d unreferenced blobs", o.gc.images, o.gc.garbage)
	if res.seedDistribution, err = seedGC(ctx, c, o.gc); err != nil {
		return err
	}
	logf("gc: seeded in %s", res.seedDistribution.Round(time.Millisecond))
	// Offline: distribution's garbage-collect demands that nothing writes.
	_ = s.cmd.Process.Signal(os.Interrupt)
	<-s.waitErr
	s.waitErr <- nil // for stop
	cmd := exec.CommandContext(ctx, o.bins.Distribution, "garbage-collect", filepath.Join(s.dir, "config.yml"))
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	res.distributionGC = time.Since(start)
	if err != nil {
		return fmt.Errorf("registry garbage-collect: %w\n%s", err, lastLines(string(out), 20))
	}
	res.distributionDeleted = strings.Count(string(out), "blob eligible for deletion")
	logf("gc: distribution garbage-collect: %s, %d blobs eligible", res.distributionGC.Round(time.Millisecond), res.distributionDeleted)
	if res.distributionDeleted < o.gc.garbage {
		return fmt.Errorf("registry garbage-collect marked %d blobs for deletion, want ≥ %d:\n%s", res.distributionDeleted, o.gc.garbage, lastLines(string(out), 20))
	}
	return nil
}

// gcSection is the report's GC section: the median of the rounds against
// the targets, then each round.
func gcSection(o gcOptions, r gcResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## 7. Garbage collection: %d unreferenced blobs among %d live images\n\n", o.garbage, o.images)
	var sweeps, pushes, pulls, pushU, pushL, pullU, pullL []float64
	for _, run := range r.rounds {
		sweeps = append(sweeps, run.sweep.Seconds())
		pushes, pulls = append(pushes, run.keptPush()), append(pulls, run.keptPull())
		pushU, pushL = append(pushU, run.unloaded.push), append(pushL, run.loaded.push)
		pullU, pullL = append(pullU, run.unloaded.pull), append(pullL, run.loaded.pull)
	}
	sweep := time.Duration(median(sweeps) * float64(time.Second))
	pushR, pullR := median(pushes), median(pulls)
	spread := func(v []float64, unit string) string {
		return fmt.Sprintf("%.0f–%.0f%s", slices.Min(v), slices.Max(v), unit)
	}
	fmt.Fprintf(&b, "Median of %d rounds [their range].\n\n", len(r.rounds))
	b.WriteString("| | registryd gc (online, versitygw) | distribution garbage-collect (offline, filesystem) | target | met |\n|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| collection wall time | %s [%s] | %s | ≤ 60 s | %s |\n", sweep.Round(100*time.Millisecond), spread(sweeps, " s"),
		r.distributionGC.Round(100*time.Millisecond), yesNo(sweep <= time.Minute))
	fmt.Fprintf(&b, "| pushes during it (%d clients) | %.1f/s of %.1f/s unloaded, %.0f %% [%s] | none (registry stopped) | ≥ 80 %% | %s |\n",
		o.clients, median(pushL), median(pushU), pushR, spread(pushes, " %"), yesNo(pushR >= 80))
	fmt.Fprintf(&b, "| pulls during it (%d clients) | %.1f/s of %.1f/s unloaded, %.0f %% [%s] | none (registry stopped) | ≥ 80 %% | %s |\n",
		o.clients, median(pullL), median(pullU), pullR, spread(pulls, " %"), yesNo(pullR >= 80))
	fmt.Fprintf(&b, "| seeding (32 concurrent clients; first round) | %s | %s | | |\n\n", r.rounds[0].seed.Round(100*time.Millisecond), r.seedDistribution.Round(100*time.Millisecond))
	b.WriteString("| round | sweep | pushes kept | pulls kept | CPU during the sweep | the next run on the same bucket, no clients (refs index) |\n|---|---|---|---|---|---|\n")
	for i, run := range r.rounds {
		fmt.Fprintf(&b, "| %d | %s | %.0f %% | %.0f %% | %s | %s, %d manifests read, %d from the index |\n", i+1, run.sweep.Round(100*time.Millisecond),
			run.keptPush(), run.keptPull(), run.cpu, run.again.Round(100*time.Millisecond), run.againRead, run.againIndexed)
	}
	b.WriteString("\n")
	if len(r.rounds) > 0 {
		fmt.Fprintf(&b, "registryd gc, last round: `%s`. distribution: %d blobs eligible for deletion.\n\n", r.rounds[len(r.rounds)-1].summary, r.distributionDeleted)
	}
	b.WriteString("Each image is a 64-byte config, a 256-byte layer and a manifest, tagged, over 20 repositories; each unreferenced " +
		"blob is 128 bytes, uploaded to one repository (registryd: POST ?digest=; distribution: POST, PUT ?digest=) and never named by a manifest. registryd serves a versitygw " +
		"bucket (posix backend on this disk) and `registryd gc --grace 1s` collects it while the clients push fresh images and pull live ones " +
		"(manifest, config, layer); the unloaded rates are the same clients, the mean of a window just before the sweep and one just after. " +
		"Each round seeds the same content under its own key prefix of the bucket, with a registryd of its own. distribution's " +
		"`registry garbage-collect` runs on its filesystem driver with the registry stopped, as its documentation requires.\n\n")
	return b.String()
}
