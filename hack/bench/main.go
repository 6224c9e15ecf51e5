// Command bench measures registryd and distribution side by side on this
// machine: same loopback, same kind of file storage (each on its own fresh
// directory on the same disk), same clients, in interleaved rounds so that
// machine noise hits both. It prints a markdown report and writes it to
// -out. Run it through `make bench` (hack/bench.sh), which installs what it
// needs and passes the binaries.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// options are the harness's knobs; every one has an environment variable so
// that `make bench` can be made shorter or longer without editing anything.
type options struct {
	bins                    binaries
	crane, wrk, ab          string
	workDir, out            string
	repoRoot, kubeBenchtime string // "" skips workload 6
	reproduce               string

	rounds       int   // BENCH_ROUNDS: rounds of workloads 2, 4
	bytesRounds  int   // BENCH_BYTES_ROUNDS: rounds of workload 1
	layers       int   // BENCH_LAYERS
	layerBytes   int64 // BENCH_LAYER_MIB
	small        int   // BENCH_SMALL_IMAGES
	pushers      int   // BENCH_PUSHERS
	wrkRounds    int   // BENCH_WRK_ROUNDS: rounds of workload 3
	wrkDuration  time.Duration
	wrkConns     int
	chunkedBytes int // BENCH_CHUNKED_MIB
	chunkBytes   int // BENCH_CHUNK_MIB
	skipCrane    bool
	kubeTags     int      // BENCH_KUBE_TAGS: tags pushed over HTTP in kubernetes mode (0: skip)
	kubeNewRepos int      // BENCH_KUBE_NEW_REPOS: new repositories pushed by crane in kubernetes mode (0: skip)
	prof         profiler // BENCH_PPROF_DIR
	gc           gcOptions
	s3           s3Options
	only         string // BENCH_ONLY=gc, kube or s3: that workload alone; bytes: the machine limits and workload 1
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func main() {
	var o options
	flag.StringVar(&o.bins.Registryd, "registryd", "bin/registryd", "registryd binary")
	flag.StringVar(&o.bins.Distribution, "distribution", "", "distribution's registry binary")
	flag.StringVar(&o.crane, "crane", "", "crane binary")
	flag.StringVar(&o.wrk, "wrk", "wrk", "wrk binary (manifest GETs)")
	flag.StringVar(&o.ab, "ab", "ab", "ab binary (manifest HEADs: wrk cannot)")
	flag.StringVar(&o.workDir, "work-dir", "", "scratch directory on the disk under test (default: a new temp dir)")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "report file")
	flag.StringVar(&o.repoRoot, "repo", ".", "repository root, for the kubernetes tag-store benchmarks")
	flag.StringVar(&o.kubeBenchtime, "kube-benchtime", "600x", "-benchtime of the kubernetes tag-store benchmarks (empty: skip them)")
	flag.StringVar(&o.reproduce, "reproduce", "make bench", "the command line that reproduces this report")
	flag.StringVar(&o.gc.s3URL, "gc-s3-url", "", "versitygw bucket URL for the garbage-collection workload (empty: skip it)")
	gcEnv := flag.String("gc-s3-env", "", "space-separated KEY=VALUE credentials of -gc-s3-url")
	flag.Parse()
	o.gc.s3Env = strings.Fields(*gcEnv)
	o.gc.images = envInt("BENCH_GC_IMAGES", 1000)
	o.gc.garbage = envInt("BENCH_GC_BLOBS", 10000)
	o.gc.clients = envInt("BENCH_GC_CLIENTS", 2)
	o.gc.window = time.Duration(envInt("BENCH_GC_WINDOW_SECONDS", 10)) * time.Second
	o.gc.workers = envInt("BENCH_GC_WORKERS", 16)
	o.gc.rounds = max(1, envInt("BENCH_GC_ROUNDS", 3))
	o.s3.layerBytes = int64(envInt("BENCH_S3_LAYER_MIB", 64)) << 20
	if os.Getenv("BENCH_S3_LAYER_MIB") == "0" {
		o.s3.layerBytes = 0
	}
	o.only = os.Getenv("BENCH_ONLY")
	o.rounds = envInt("BENCH_ROUNDS", 3)
	// Workload 1's figures move more from run to run than the others, and
	// a round of it is short: more rounds, for medians that hold.
	o.bytesRounds = envInt("BENCH_BYTES_ROUNDS", 5)
	o.layers = envInt("BENCH_LAYERS", 4)
	o.layerBytes = int64(envInt("BENCH_LAYER_MIB", 256)) << 20
	o.small = envInt("BENCH_SMALL_IMAGES", 200)
	o.pushers = envInt("BENCH_PUSHERS", 8)
	o.wrkRounds = envInt("BENCH_WRK_ROUNDS", 2)
	o.wrkDuration = time.Duration(envInt("BENCH_WRK_SECONDS", 10)) * time.Second
	o.wrkConns = envInt("BENCH_WRK_CONNECTIONS", 32)
	o.chunkedBytes = envInt("BENCH_CHUNKED_MIB", 256) << 20
	o.chunkBytes = envInt("BENCH_CHUNK_MIB", 5) << 20
	o.skipCrane = os.Getenv("BENCH_SKIP_CRANE") != ""
	o.kubeTags = envInt("BENCH_KUBE_TAGS", 100)
	if os.Getenv("BENCH_KUBE_TAGS") == "0" {
		o.kubeTags = 0
	}
	o.kubeNewRepos = envInt("BENCH_KUBE_NEW_REPOS", 1000)
	if os.Getenv("BENCH_KUBE_NEW_REPOS") == "0" || o.skipCrane {
		o.kubeNewRepos = 0
	}
	o.prof = profiler{dir: os.Getenv("BENCH_PPROF_DIR")}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.bins.Distribution == "" || (o.crane == "" && !o.skipCrane) {
		return errors.New("-distribution and -crane are required (make bench passes them)")
	}
	waitQuiet(ctx, 3*time.Minute)
	started := time.Now()
	machine := machineLine()
	if o.workDir == "" {
		d, err := os.MkdirTemp("", "stevedore-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.workDir = d
	}
	logf("machine: %s", machine)
	switch o.only {
	case "gc":
		return runGCOnly(ctx, o)
	case "kube":
		return runKubeOnly(ctx, o)
	case "s3":
		t, err := runS3(ctx, o)
		if err != nil {
			return err
		}
		fmt.Printf("Machine: %s.\n\n%s", machine, t.markdown())
		return nil
	}

	logf("machine limits")
	limits, err := measureLimits(ctx, o.workDir, o.layers, o.layerBytes)
	if err != nil {
		return err
	}

	logf("generating %d × %d MiB random layers", o.layers, o.layerBytes>>20)
	layoutDir := filepath.Join(o.workDir, "layout")
	big, err := bigImage(layoutDir, o.layers, o.layerBytes)
	if err != nil {
		return err
	}
	bigTotal := int64(o.layers) * o.layerBytes
	smalls, err := smallImages(o.small, 4<<10)
	if err != nil {
		return err
	}
	chunked := make([]byte, o.chunkedBytes)
	randomBytes(99, chunked)

	gib := fmt.Sprintf("%d × %d MiB", o.layers, o.layerBytes>>20)
	bigT := &table{title: "1. Push then pull one image of " + gib + " random layers; 5. peak RSS"}
	pushGo := bigT.add(&figure{name: "push, Go client (ggcr remote)", unit: "MB/s", targetRatio: 2.5})
	pullGo := bigT.add(&figure{name: "pull, Go client (ggcr remote)", unit: "MB/s", targetRatio: 2.5})
	sha := limits.limits[0].value
	pushGo.absolute = func(m float64) (string, bool) {
		return fmt.Sprintf("≥ 60%% of sha256 (%.0f%%)", 100*m/sha), m >= 0.6*sha
	}
	var pushCrane, pullCrane, pullCurl *figure
	var layerDigests []v1.Hash
	curl, curlErr := exec.LookPath("curl")
	if !o.skipCrane {
		// The crane and curl rows carry the bytes-path issue's targets;
		// the Go client rows the original ones.
		pushCrane = bigT.add(&figure{name: "push, crane process", unit: "MB/s", targetRatio: 1.3})
		pullCrane = bigT.add(&figure{name: fmt.Sprintf("pull, crane process (%d pulls a round)", cranePullsPerRound), unit: "MB/s", targetRatio: 1.2})
		if curlErr != nil {
			return fmt.Errorf("curl (the plain-GET figure): %w", curlErr)
		}
		pullCurl = bigT.add(&figure{name: fmt.Sprintf("GET each layer with curl, one at a time (%d passes a round)", curlPassesPerRound), unit: "MB/s", targetRatio: 1})
		loopback := limits.limits[len(limits.limits)-1].value
		pullCurl.absolute = func(m float64) (string, bool) {
			return fmt.Sprintf("≥ 60%% of loopback (%.0f%%)", 100*m/loopback), m >= 0.6*loopback
		}
		logf("crane push into a sink (the client's ceiling)")
		sinkPush, err := craneSinkLimit(ctx, o.crane, layoutDir, bigTotal, 2)
		if err != nil {
			return fmt.Errorf("crane push into a sink: %w", err)
		}
		limits.limit("crane push of the image below into a sink that keeps, hashes and writes nothing (the client's own ceiling; best of 2)", "MB/s", sinkPush)
		layers, err := big.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			layerDigests = append(layerDigests, d)
		}
	}
	rssPush := bigT.add(&figure{name: "peak RSS during the Go push", unit: "MiB", lowerIsBetter: true,
		absolute: func(m float64) (string, bool) { return "< 128 MiB", m < 128 }})
	rssAll := bigT.add(&figure{name: "peak RSS, Go push + pull", unit: "MiB", lowerIsBetter: true})

	smallT := &table{title: fmt.Sprintf("2. %d small images (one 4 KiB layer each), %d concurrent pushers (Go client)", o.small, o.pushers)}
	smallRate := smallT.add(&figure{name: "push rate", unit: "images/s", targetRatio: 2})
	smallP50 := smallT.add(&figure{name: "push latency p50", unit: "ms", lowerIsBetter: true})
	smallP99 := smallT.add(&figure{name: "push latency p99", unit: "ms", lowerIsBetter: true})

	wrkT := &table{title: fmt.Sprintf("3. Manifest requests (GET: wrk -t2; HEAD: ab), %d connections, %s each", o.wrkConns, o.wrkDuration)}
	type wrkCase struct {
		method string
		byTag  bool
		f      *figure
	}
	var wrkCases []wrkCase
	for _, m := range []string{"GET", "HEAD"} {
		for _, byTag := range []bool{true, false} {
			by := "digest"
			f := &figure{unit: "req/s"}
			if byTag {
				by = "tag"
				if m == "GET" {
					f.targetRatio = 3
				}
			}
			f.name = m + " manifest by " + by
			wrkCases = append(wrkCases, wrkCase{m, byTag, wrkT.add(f)})
		}
	}

	chunkT := &table{title: fmt.Sprintf("4. Chunked upload of %d MiB in %d MiB chunks", o.chunkedBytes>>20, o.chunkBytes>>20)}
	chunkRate := chunkT.add(&figure{name: "upload", unit: "MB/s"})

	for round := range max(o.rounds, o.bytesRounds) {
		// Alternate who goes first, so neither always runs on the
		// caches and the thermal state the other left behind.
		order := []kind{registryd, distribution}
		if round%2 == 1 {
			order = []kind{distribution, registryd}
		}
		for _, k := range order {
			if round >= o.bytesRounds {
				break
			}
			logf("round %d/%d, %s: workload 1 (Go client)", round+1, o.bytesRounds, k)
			if err := withServer(ctx, o, k, func(s *server) error {
				if err := warmSource(layoutDir); err != nil {
					return err
				}
				defer o.prof.during(ctx, s, fmt.Sprintf("push-go-%d", round), 2*time.Second)()
				push, pull, err := pushPullGoMeasured(ctx, s, big, bigTotal, rssPush)
				if err != nil {
					return err
				}
				pushGo.record(k, push)
				pullGo.record(k, pull)
				rss, err := s.peakRSS()
				rssAll.record(k, float64(rss)/(1<<20))
				return err
			}); err != nil {
				return err
			}
		}
		if !o.skipCrane && round < o.bytesRounds {
			for _, k := range order {
				logf("round %d/%d, %s: workload 1 (crane)", round+1, o.bytesRounds, k)
				if err := withServer(ctx, o, k, func(s *server) error {
					return craneRound(ctx, o.crane, curl, s, layoutDir, layerDigests, bigTotal, pushCrane, pullCrane, pullCurl)
				}); err != nil {
					return err
				}
			}
		}
		if o.only == "bytes" || round >= o.rounds {
			continue
		}
		for _, k := range order {
			logf("round %d/%d, %s: workloads 2 and 3", round+1, o.rounds, k)
			if err := withServer(ctx, o, k, func(s *server) error {
				res, err := pushSmall(ctx, s, smalls, o.pushers)
				if err != nil {
					return err
				}
				smallRate.record(k, res.perSecond)
				smallP50.record(k, res.p50)
				smallP99.record(k, res.p99)
				if round >= o.wrkRounds {
					return nil
				}
				dgst, err := smalls[0].Digest()
				if err != nil {
					return err
				}
				for _, c := range wrkCases {
					ref := "i0000"
					if !c.byTag {
						ref = dgst.String()
					}
					wait := o.prof.during(ctx, s, fmt.Sprintf("%s-%s-%d", c.method, strings.ReplaceAll(c.f.name[len(c.method)+1:], " ", "-"), round), o.wrkDuration-time.Second)
					rate, err := manifestLoad(ctx, loadOptions{Wrk: o.wrk, Ab: o.ab, Connections: o.wrkConns, Duration: o.wrkDuration,
						Method: c.method}, s.URL()+"/v2/small/app/manifests/"+ref)
					wait()
					if err != nil {
						return fmt.Errorf("%s: %w", k, err)
					}
					c.f.record(k, rate)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		for _, k := range order {
			logf("round %d/%d, %s: workload 4", round+1, o.rounds, k)
			if err := withServer(ctx, o, k, func(s *server) error {
				defer o.prof.during(ctx, s, fmt.Sprintf("chunked-%d", round), time.Second)()
				rate, err := chunkedUpload(ctx, s, chunked, o.chunkBytes)
				chunkRate.record(k, rate)
				return err
			}); err != nil {
				return err
			}
		}
	}

	if o.only == "bytes" {
		fmt.Printf("Machine: %s.\n\n%s%s", machine, limits.markdown(), bigT.markdown())
		return nil
	}
	tables := []*table{limits, bigT, smallT, wrkT, chunkT}
	if o.s3.layerBytes > 0 && o.gc.s3URL != "" && !o.skipCrane {
		t, err := runS3(ctx, o)
		if err != nil {
			return err
		}
		tables = append(tables, t)
	}

	var kubeHTTPRes *kubeHTTPResult
	if o.kubeTags > 0 {
		logf("workload 6: registryd in kubernetes mode (hack/dev: real kube-apiserver + etcd), over HTTP")
		res, err := kubeHTTP(ctx, o.kubeHTTPOptions(), smalls[0])
		if err != nil {
			return err
		}
		kubeHTTPRes = &res
	}
	var kubeBench string
	if o.kubeBenchtime != "" {
		logf("workload 6: kubernetes tag-store Go benchmarks against a real kube-apiserver")
		if kubeBench, err = runKubeBench(ctx, o.repoRoot, o.kubeBenchtime); err != nil {
			return err
		}
	}
	kubeT, err := kubeSection(kubeBench, kubeHTTPRes, median(wrkCases[0].f.values[distribution]), o.pushers)
	if err != nil {
		return err
	}
	if o.gc.s3URL != "" {
		logf("workload 7: garbage collection")
		res, err := gcWorkload(ctx, o)
		if err != nil {
			return err
		}
		kubeT += gcSection(o.gc, res)
	}
	report := renderReport(o, machine, started, tables, kubeT)
	fmt.Print(report)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", o.out, err)
		}
		logf("wrote %s", o.out)
	}
	return nil
}

// runS3 is workload 8 on an image of its own (BENCH_S3_LAYER_MIB layers).
func runS3(ctx context.Context, o options) (*table, error) {
	if o.gc.s3URL == "" || o.crane == "" {
		return nil, errors.New("workload 8 needs -gc-s3-url (hack/bench.sh starts versitygw) and crane")
	}
	logf("workload 8: generating %d × %d MiB random layers for S3", o.layers, o.s3.layerBytes>>20)
	dir := filepath.Join(o.workDir, "layout-s3")
	img, err := bigImage(dir, o.layers, o.s3.layerBytes)
	if err != nil {
		return nil, err
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var digests []v1.Hash
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		digests = append(digests, d)
	}
	return s3Workload(ctx, o, dir, digests, int64(o.layers)*o.s3.layerBytes)
}

// runGCOnly is BENCH_ONLY=gc (make bench-gc): workload 7 alone, printed,
// docs/benchmarks.md left as it is.
func runGCOnly(ctx context.Context, o options) error {
	if o.gc.s3URL == "" {
		return errors.New("BENCH_ONLY=gc needs -gc-s3-url (hack/bench.sh starts versitygw)")
	}
	res, err := gcWorkload(ctx, o)
	if err != nil {
		return err
	}
	fmt.Printf("Machine: %s.\n\n%s", machineLine(), gcSection(o.gc, res))
	return nil
}

func (o options) kubeHTTPOptions() kubeHTTPOptions {
	return kubeHTTPOptions{RepoRoot: o.repoRoot, Registryd: o.bins.Registryd, WorkDir: o.workDir,
		Tags: o.kubeTags, Pushers: o.pushers, NewRepos: o.kubeNewRepos, Crane: o.crane, Prof: o.prof,
		Load: loadOptions{Wrk: o.wrk, Connections: o.wrkConns, Duration: o.wrkDuration}}
}

// runKubeOnly is BENCH_ONLY=kube (make bench-kube): workload 6 over HTTP
// alone, printed, docs/benchmarks.md left as it is.
func runKubeOnly(ctx context.Context, o options) error {
	smalls, err := smallImages(1, 4<<10)
	if err != nil {
		return err
	}
	res, err := kubeHTTP(ctx, o.kubeHTTPOptions(), smalls[0])
	if err != nil {
		return err
	}
	section, err := kubeSection("", &res, 0, o.pushers)
	if err != nil {
		return err
	}
	fmt.Printf("Machine: %s.\n\n%s", machineLine(), section)
	return nil
}

// pushPullGoMeasured is workload 1 with the Go client, reading the
// server's peak RSS between push and pull (workload 5).
func pushPullGoMeasured(ctx context.Context, s *server, img v1.Image, total int64, rss *figure) (push, pull float64, err error) {
	// The push's high-water mark is read before the pull can raise it.
	return pushPullGoWith(ctx, s, img, total, func() error {
		v, err := s.peakRSS()
		rss.record(s.kind, float64(v)/(1<<20))
		return err
	})
}

func withServer(ctx context.Context, o options, k kind, f func(*server) error) error {
	s, err := startServer(ctx, k, o.bins, o.workDir)
	if err != nil {
		return err
	}
	defer s.stop()
	return f(s)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "== %s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, args...)...)
}

// waitQuiet waits, at most limit, for the machine's one-minute load average
// to fall under 1: a run started while an earlier job (a build, a test
// suite) still ran measured both servers slower, and not by the same
// factor. The load at start is in the report's machine line.
func waitQuiet(ctx context.Context, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for {
		b, err := os.ReadFile("/proc/loadavg")
		if err != nil {
			return
		}
		load, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
		if err != nil || load < 1 || time.Now().After(deadline) {
			return
		}
		logf("waiting for the machine to settle: load average %.2f", load)
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// machineLine names the machine: cores, memory, CPU model, Go, load.
func machineLine() string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if m := regexp.MustCompile(`MemTotal:\s+(\d+) kB`).FindSubmatch(b); m != nil {
			kb, _ := strconv.ParseFloat(string(m[1]), 64)
			mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	goVersion := runtime.Version()
	if out, err := exec.Command("go", "env", "GOVERSION").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d cores, %s, %s, %s, load average at start %s", runtime.NumCPU(), mem, cpu, goVersion, load)
}
