package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// newReposResult is the cost of pushing into repositories that do not
// exist yet (issue 18): each push creates a Repository object.
type newReposResult struct {
	repos, pushers int
	perSecond      float64
	apiPerRepo     float64 // registryd's requests to the API server per new repository, Events included
	detail         string  // those requests by resource
	// allPerRepo is what the API server itself counted per new repository
	// (apiserver_request_total, watches apart): registryd's requests and
	// the operator's; allDetail by verb and resource.
	allPerRepo float64
	allDetail  string
	// CPU while the pushes ran, in cores (CPU seconds per wall second);
	// clients is the crane processes' own, and perCopy their CPU per copy:
	// one process per copy starts a Go program each time, which on two
	// cores bounds the rate before the registry does.
	apiserver, etcd, operator, registryd, clients float64
	perCopy                                       time.Duration
	// inProcess: the copies ran on goroutines of the bench (clients is
	// then its CPU), not in crane processes.
	inProcess bool
}

// newRepositories copies src into n new repositories with `pushers`
// concurrent crane processes, one process per copy, as a fleet of CI jobs
// would; crane mounts the layers from src, so each push is a manifest PUT
// that creates a Repository. dev is hack/dev's process: the operator runs
// in it, and the API server and etcd are its children.
func newRepositories(ctx context.Context, s *server, crane, src string, n, pushers, dev int, kubeconfig string) (newReposResult, error) {
	return pushNewRepositories(ctx, s, "ci/new-", n, pushers, dev, kubeconfig, false, func(ctx context.Context, dst string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, crane, "copy", "--insecure", src, dst)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("crane copy %s %s: %w: %s", src, dst, err, out)
		}
		return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
	})
}

// newRepositoriesInProcess is newRepositories with go-containerregistry's
// remote.Write (what crane copy runs) on `pushers` goroutines of this
// process: the registry's and the API server's rate without a process
// start per copy. Layers are mounted from src, as crane does.
func newRepositoriesInProcess(ctx context.Context, s *server, src string, n, pushers, dev int, kubeconfig string) (newReposResult, error) {
	srcRef, err := name.ParseReference(src, name.Insecure)
	if err != nil {
		return newReposResult{}, err
	}
	tr := transport()
	defer tr.CloseIdleConnections()
	img, err := remote.Image(srcRef, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		return newReposResult{}, err
	}
	return pushNewRepositories(ctx, s, "ci/go-", n, pushers, dev, kubeconfig, true, func(ctx context.Context, dst string) (time.Duration, error) {
		ref, err := name.ParseReference(dst, name.Insecure)
		if err != nil {
			return 0, err
		}
		return 0, remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr))
	})
}

// pushNewRepositories runs copyTo for n new repositories under prefix on
// `pushers` workers. copyTo returns the CPU of the process it started for
// the copy; inProcess: it started none, and the clients' CPU is this
// process's.
func pushNewRepositories(ctx context.Context, s *server, prefix string, n, pushers, dev int, kubeconfig string, inProcess bool,
	copyTo func(ctx context.Context, dst string) (time.Duration, error)) (newReposResult, error) {
	res := newReposResult{repos: n, pushers: pushers, inProcess: inProcess}
	before, err := apiRequests(ctx, s.debugAddr)
	if err != nil {
		return res, err
	}
	allBefore, err := apiserverRequests(ctx, kubeconfig)
	if err != nil {
		return res, err
	}
	apiservers, etcds, registryds := childrenNamed(dev, "kube-apiserver"), childrenNamed(dev, "etcd"), childrenNamed(dev, "registryd")
	if len(apiservers) == 0 || len(etcds) == 0 || len(registryds) == 0 {
		return res, fmt.Errorf("hack/dev (pid %d): kube-apiserver %v, etcd %v, registryd %v: want one of each", dev, apiservers, etcds, registryds)
	}
	sample := func() [4]time.Duration {
		return [4]time.Duration{cpuOfAll(apiservers), cpuOfAll(etcds), procCPU(dev), cpuOfAll(registryds)}
	}
	cpu0 := sample()
	self0 := procCPU(os.Getpid())
	var next, copyCPU atomic.Int64
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range pushers {
		g.Go(func() error {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				cpu, err := copyTo(gctx, fmt.Sprintf("%s/%s%04d:v1", s.addr, prefix, i))
				if err != nil {
					return err
				}
				copyCPU.Add(int64(cpu))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	wall := time.Since(start)
	cpu1 := sample()
	res.perSecond = float64(n) / wall.Seconds()
	cores := func(i int) float64 { return (cpu1[i] - cpu0[i]).Seconds() / wall.Seconds() }
	res.apiserver, res.etcd, res.operator, res.registryd = cores(0), cores(1), cores(2), cores(3)
	clientCPU := time.Duration(copyCPU.Load())
	if inProcess {
		clientCPU = procCPU(os.Getpid()) - self0
	}
	res.clients = clientCPU.Seconds() / wall.Seconds()
	res.perCopy = clientCPU / time.Duration(n)
	after, err := apiRequests(ctx, s.debugAddr)
	if err != nil {
		return res, err
	}
	events, others, detail := requestsDuring(before, after)
	res.apiPerRepo, res.detail = (events+others)/float64(n), detail
	allAfter, err := apiserverRequests(ctx, kubeconfig)
	if err != nil {
		return res, err
	}
	events, others, res.allDetail = requestsDuring(allBefore, allAfter)
	res.allPerRepo = (events + others) / float64(n)
	// Every push landed: the catalog (from the informer cache) lists them.
	listed, err := catalogCount(ctx, s, prefix)
	if err != nil {
		return res, err
	}
	if listed != n {
		return res, fmt.Errorf("%d new repositories pushed, %d in the catalog", n, listed)
	}
	return res, nil
}

// apiserverRequests reads the API server's own apiserver_request_total
// (through kubectl and the admin kubeconfig), summed by verb and resource
// (subresource too), watches apart: every client's requests, the
// operator's included.
func apiserverRequests(ctx context.Context, kubeconfig string) (map[string]float64, error) {
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "--raw", "/metrics").Output()
	if err != nil {
		return nil, fmt.Errorf("the API server's /metrics: %w", err)
	}
	byVerb := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		verb, res, sub := label(line, "verb"), label(line, "resource"), label(line, "subresource")
		if verb == "WATCH" || res == "" || label(line, "group") == "coordination.k8s.io" {
			continue // long-running; leases are the operator's leader election, not the load
		}
		if sub != "" {
			res += "/" + sub
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return nil, err
		}
		key := verb + " " + res
		if res == "events" {
			key = "events" // requestsDuring counts these apart
		}
		byVerb[key] += v
	}
	if len(byVerb) == 0 {
		return nil, errors.New("the API server's /metrics has no apiserver_request_total")
	}
	return byVerb, nil
}

func label(line, name string) string {
	i := strings.Index(line, name+`="`)
	if i < 0 {
		return ""
	}
	rest := line[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}

// catalogCount counts the repositories under prefix in /v2/_catalog,
// following its Link pages.
func catalogCount(ctx context.Context, s *server, prefix string) (int, error) {
	count, path := 0, "/v2/_catalog?n=1000"
	for path != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+path, nil)
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		var page struct{ Repositories []string }
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		for _, r := range page.Repositories {
			if strings.HasPrefix(r, prefix) {
				count++
			}
		}
		// Link: </v2/_catalog?last=…&n=1000>; rel="next"
		path = ""
		if l := resp.Header.Get("Link"); l != "" {
			if i, j := strings.Index(l, "<"), strings.Index(l, ">"); i >= 0 && j > i {
				path = l[i+1 : j]
			}
		}
	}
	return count, nil
}
