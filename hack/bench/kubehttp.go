package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// kubeHTTPOptions shape workload 6 over HTTP.
type kubeHTTPOptions struct {
	RepoRoot, Registryd, WorkDir string
	Tags, Pushers                int
	Load                         loadOptions
	NewRepos                     int    // new repositories pushed by crane processes (0: skip)
	Crane                        string // the crane binary
	Prof                         profiler
}

// kubeHTTPResult is registryd in kubernetes mode, measured over HTTP.
type kubeHTTPResult struct {
	tagsPerSecond float64 // manifest PUTs by tag into Repository status
	getByTag      float64 // req/s, tags from the informer cache
	apiRequests   float64 // requests registryd sent to the API server during the GET load, Events apart
	events        float64 // Events of the earlier pushes, sent by client-go in the background meanwhile
	newRepos      *newReposResult
	newReposGo    *newReposResult // the same with go-containerregistry in this process
}

// kubeHTTP runs `make dev`'s harness (hack/dev: a real kube-apiserver and
// etcd, the operator, the sample Registry, and registryd for it with the
// operator's arguments) on ports of its own, pushes tags into Repository
// status over HTTP, then loads manifest GETs by tag while registryd's own
// count of API-server requests must stay still.
func kubeHTTP(ctx context.Context, o kubeHTTPOptions, img v1.Image) (kubeHTTPResult, error) {
	var res kubeHTTPResult
	devBin := filepath.Join(o.WorkDir, "dev")
	build := exec.CommandContext(ctx, "go", "build", "-o", devBin, "./hack/dev")
	build.Dir = o.RepoRoot
	if out, err := build.CombinedOutput(); err != nil {
		return res, fmt.Errorf("building hack/dev: %w: %s", err, out)
	}
	addr, err := freePort()
	if err != nil {
		return res, err
	}
	debugAddr, err := freePort()
	if err != nil {
		return res, err
	}
	registrydBin, err := filepath.Abs(o.Registryd)
	if err != nil {
		return res, err
	}
	dir := filepath.Join(o.WorkDir, "kube-dev")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	logf, err := os.Create(filepath.Join(dir, "dev.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	args := []string{"-addr", addr, "-debug-addr", debugAddr, "-dir", dir, "-registryd", registrydBin}
	if o.Prof.dir != "" {
		args = append(args, "-pprof")
	}
	cmd := exec.Command(devBin, args...)
	cmd.Dir = o.RepoRoot
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return res, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// hack/dev stops registryd, the API server and etcd on SIGINT.
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-exited
		}
	}()
	s := &server{kind: registryd, addr: addr, debugAddr: debugAddr, dir: dir, waitErr: exited}
	if err := waitUp(ctx, s, exited, 3*time.Minute); err != nil {
		return res, err
	}

	tr := transport()
	defer tr.CloseIdleConnections()
	first, err := ref(s, "bench/app", "t0000")
	if err != nil {
		return res, err
	}
	if err := remote.Write(first, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		return res, fmt.Errorf("push in kubernetes mode: %w", err)
	}
	var next atomic.Int64
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range o.Pushers {
		g.Go(func() error {
			for i := next.Add(1); i <= int64(o.Tags); i = next.Add(1) {
				r, err := ref(s, "bench/app", fmt.Sprintf("t%04d", i))
				if err != nil {
					return err
				}
				if err := remote.Tag(r.Context().Tag(r.Identifier()), img, remote.WithContext(gctx), remote.WithTransport(tr)); err != nil {
					return fmt.Errorf("tag push in kubernetes mode: %w", err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	res.tagsPerSecond = float64(o.Tags) / time.Since(start).Seconds()

	// Let the informer cache catch up with the last status write, then
	// count only what the GET load itself sends.
	time.Sleep(2 * time.Second)
	url := s.URL() + "/v2/bench/app/manifests/t0001"
	before, err := apiRequests(ctx, debugAddr)
	if err != nil {
		return res, err
	}
	load := o.Load
	load.Method = http.MethodGet
	if res.getByTag, err = manifestLoad(ctx, load, url); err != nil {
		return res, fmt.Errorf("kubernetes mode: %w", err)
	}
	after, err := apiRequests(ctx, debugAddr)
	if err != nil {
		return res, err
	}
	var detail string
	res.events, res.apiRequests, detail = requestsDuring(before, after)
	if res.apiRequests != 0 {
		return res, fmt.Errorf("kubernetes mode: registryd sent API requests other than Events while serving manifest GETs by tag (%s); the informer cache must serve them", detail)
	}
	if o.NewRepos > 0 {
		nr, err := newRepositories(ctx, s, o.Crane, first.String(), o.NewRepos, o.Pushers, cmd.Process.Pid, filepath.Join(dir, "kubeconfig"))
		if err != nil {
			return res, fmt.Errorf("kubernetes mode, new repositories: %w", err)
		}
		res.newRepos = &nr
		profiled := o.Prof.during(ctx, s, "kube-new-repositories", 10*time.Second)
		apiProfiled := o.Prof.apiserver(ctx, filepath.Join(dir, "kubeconfig"), "kube-new-repositories-apiserver", 10*time.Second)
		inProc, err := newRepositoriesInProcess(ctx, s, first.String(), o.NewRepos, o.Pushers, cmd.Process.Pid, filepath.Join(dir, "kubeconfig"))
		profiled()
		apiProfiled()
		if err != nil {
			return res, fmt.Errorf("kubernetes mode, new repositories (in process): %w", err)
		}
		res.newReposGo = &inProc
	}
	return res, nil
}

func waitUp(ctx context.Context, s *server, exited chan error, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("hack/dev exited (%v); log in %s", err, s.dir)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := http.Get(s.URL() + "/v2/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("registryd in kubernetes mode not up after %s; log in %s", limit, s.dir)
}

// apiRequests reads stevedore_kube_api_requests_total from registryd's
// /metrics, summed by resource.
func apiRequests(ctx context.Context, debugAddr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	byResource := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "stevedore_kube_api_requests_total{") {
			continue
		}
		m := resourceLabel.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("no resource label in %q", line)
		}
		if mm := methodLabel.FindStringSubmatch(line); mm != nil && m[1] != "events" {
			m[1] += " " + mm[1] // where a repository's requests go
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, err
		}
		byResource[m[1]] += v
	}
	if len(byResource) == 0 {
		return nil, errors.New("registryd's /metrics has no stevedore_kube_api_requests_total")
	}
	return byResource, sc.Err()
}

var (
	resourceLabel = regexp.MustCompile(`resource="([^"]*)"`)
	methodLabel   = regexp.MustCompile(`method="([^"]*)"`)
)

// requestsDuring is what registryd sent between two readings: Events
// apart (client-go sends those of earlier pushes in the background), and
// every other resource, which the pull path must not touch.
func requestsDuring(before, after map[string]float64) (events, others float64, detail string) {
	var parts []string
	for res, n := range after {
		d := n - before[res]
		if d == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %.0f", res, d))
		if res == "events" {
			events += d
		} else {
			others += d
		}
	}
	slices.Sort(parts)
	return events, others, strings.Join(parts, ", ")
}
