package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// transport is a fresh client transport per server run, so no connection
// outlives the server it was opened to.
func transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	t.DisableCompression = true
	return t
}

func ref(s *server, repo, tag string) (name.Reference, error) {
	return name.ParseReference(s.addr+"/"+repo+":"+tag, name.Insecure)
}

// pushPullGo pushes img with go-containerregistry's remote package (its
// default four concurrent blob uploads) and pulls it back, reading every
// layer to the end (the client verifies each digest as it reads), four
// layers at a time. between runs after the push, before the pull.
func pushPullGoWith(ctx context.Context, s *server, img v1.Image, total int64, between func() error) (push, pull float64, err error) {
	r, err := ref(s, "big/go", "v1")
	if err != nil {
		return 0, 0, err
	}
	tr := transport()
	defer tr.CloseIdleConnections()
	start := time.Now()
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		return 0, 0, fmt.Errorf("push to %s: %w", s.kind, err)
	}
	push = mbps(total, time.Since(start))
	if err := between(); err != nil {
		return push, 0, err
	}
	start = time.Now()
	got, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		return push, 0, fmt.Errorf("pull from %s: %w", s.kind, err)
	}
	layers, err := got.Layers()
	if err != nil {
		return push, 0, err
	}
	var g errgroup.Group
	for _, l := range layers {
		g.Go(func() error {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return push, 0, fmt.Errorf("pull from %s: %w", s.kind, err)
	}
	return push, mbps(total, time.Since(start)), nil
}

// pushPullCrane runs crane as a process: push of the OCI layout, pull as
// a tarball into /dev/null.
func pushPullCrane(ctx context.Context, crane string, s *server, layoutDir string, total int64) (push, pull float64, err error) {
	if push, err = pushCrane(ctx, crane, s, layoutDir, total); err != nil {
		return 0, 0, err
	}
	pull, err = pullCrane(ctx, crane, s, total)
	return push, pull, err
}

// A crane round pushes once (a second push into the same server finds
// every blob there) but pulls and GETs several times, all recorded: those
// figures are the noisiest of workload 1 and cheap to take again.
const (
	cranePullsPerRound = 3
	curlPassesPerRound = 5
)

// craneRound is workload 1 by crane and curl on s: one push of the layout,
// then cranePullsPerRound pulls and curlPassesPerRound passes of curl GETs
// over its layers.
func craneRound(ctx context.Context, crane, curl string, s *server, layoutDir string, layers []v1.Hash, total int64, push, pull, get *figure) error {
	rate, err := pushCrane(ctx, crane, s, layoutDir, total)
	if err != nil {
		return err
	}
	push.record(s.kind, rate)
	for range cranePullsPerRound {
		if rate, err = pullCrane(ctx, crane, s, total); err != nil {
			return err
		}
		pull.record(s.kind, rate)
	}
	for range curlPassesPerRound {
		if rate, err = curlLayers(ctx, curl, s, "big/crane", layers, total); err != nil {
			return err
		}
		get.record(s.kind, rate)
	}
	return nil
}

// pushCrane pushes the OCI layout in layoutDir to s as big/crane:v1, from
// memory (warmSource).
func pushCrane(ctx context.Context, crane string, s *server, layoutDir string, total int64) (float64, error) {
	if err := warmSource(layoutDir); err != nil {
		return 0, err
	}
	return runCrane(ctx, crane, s, total, "push", layoutDir, s.addr+"/big/crane:v1")
}

// pullCrane pulls what pushCrane pushed, as a tarball into /dev/null.
func pullCrane(ctx context.Context, crane string, s *server, total int64) (float64, error) {
	return runCrane(ctx, crane, s, total, "pull", s.addr+"/big/crane:v1", os.DevNull)
}

// runCrane runs one crane command against s and returns total bytes over
// its wall time.
func runCrane(ctx context.Context, crane string, s *server, total int64, args ...string) (float64, error) {
	cmd := exec.CommandContext(ctx, crane, append([]string{"--insecure"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("crane %s against %s: %w: %s", args[0], s.kind, err, lastLines(out.String(), 5))
	}
	return mbps(total, time.Since(start)), nil
}

// curlLayers GETs each layer of repo with curl into /dev/null, one after
// another, as a user or a script fetching a blob would: one connection,
// no client-side digest check, redirects followed. The rate is all
// layers' bytes over the whole time.
func curlLayers(ctx context.Context, curl string, s *server, repo string, layers []v1.Hash, total int64) (float64, error) {
	start := time.Now()
	for _, d := range layers {
		url := s.URL() + "/v2/" + repo + "/blobs/" + d.String()
		out, err := exec.CommandContext(ctx, curl, "-sS", "-f", "-L", "-o", os.DevNull, url).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("curl %s from %s: %w: %s", url, s.kind, err, out)
		}
	}
	return mbps(total, time.Since(start)), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// smallResult is the outcome of pushing many small images.
type smallResult struct {
	perSecond, p50, p99 float64 // images/s, latency in ms
}

// pushSmall pushes imgs into one repository, one tag each, with the given
// number of concurrent pushers; latency is one whole image push (blob
// existence checks, uploads, manifest).
func pushSmall(ctx context.Context, s *server, imgs []v1.Image, pushers int) (smallResult, error) {
	tr := transport()
	defer tr.CloseIdleConnections()
	lat := make([]time.Duration, len(imgs))
	var next sync.Mutex
	i := 0
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range pushers {
		g.Go(func() error {
			for {
				next.Lock()
				n := i
				i++
				next.Unlock()
				if n >= len(imgs) {
					return nil
				}
				r, err := ref(s, "small/app", fmt.Sprintf("i%04d", n))
				if err != nil {
					return err
				}
				t0 := time.Now()
				if err := remote.Write(r, imgs[n], remote.WithContext(gctx), remote.WithTransport(tr)); err != nil {
					return fmt.Errorf("small push to %s: %w", s.kind, err)
				}
				lat[n] = time.Since(t0)
			}
		})
	}
	if err := g.Wait(); err != nil {
		return smallResult{}, err
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
	}
	return smallResult{perSecond: float64(len(imgs)) / elapsed.Seconds(), p50: ms(0.50), p99: ms(0.99)}, nil
}

var (
	wrkRate   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	abRate    = regexp.MustCompile(`Requests per second:\s+([0-9.]+)`)
	abFailed  = regexp.MustCompile(`(Failed requests|Non-2xx responses):\s+([1-9]\d*)`)
)

// loadOptions shape one load-generator run.
type loadOptions struct {
	Wrk, Ab     string
	Connections int
	Duration    time.Duration
	Method      string // GET (wrk) or HEAD (ab)
}

// manifestLoad puts load on one manifest URL and returns requests/s. GET
// runs wrk; HEAD runs ab, because wrk's parser waits for the body a HEAD
// answer announces but never sends. Any non-2xx answer or socket error
// fails the figure: a fast error page must not pass for a fast registry.
func manifestLoad(ctx context.Context, o loadOptions, url string) (float64, error) {
	const accept = "Accept: application/vnd.oci.image.manifest.v1+json"
	secs := strconv.Itoa(int(o.Duration.Seconds()))
	var cmd *exec.Cmd
	switch o.Method {
	case http.MethodGet:
		cmd = exec.CommandContext(ctx, o.Wrk, "-t2", "-c"+strconv.Itoa(o.Connections), "-d"+secs+"s", "-H", accept, url)
	case http.MethodHead:
		// -t before -n: -t alone caps the run at 50000 requests.
		cmd = exec.CommandContext(ctx, o.Ab, "-i", "-k", "-q", "-c", strconv.Itoa(o.Connections), "-t", secs, "-n", "100000000", "-H", accept, url)
	default:
		return 0, fmt.Errorf("no load generator for %s", o.Method)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", cmd.Path, err, lastLines(string(out), 10))
	}
	for _, re := range []*regexp.Regexp{wrkNon2xx, wrkErrors, abFailed} {
		if m := re.Find(out); m != nil {
			return 0, fmt.Errorf("%s %s: %s", o.Method, url, m)
		}
	}
	rate := wrkRate
	if o.Method == http.MethodHead {
		rate = abRate
	}
	m := rate.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("%s printed no rate: %s", cmd.Path, out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// chunkedUpload uploads size random bytes as one blob in chunk-byte PATCH
// requests (Content-Range), then PUT ?digest=, by hand: the spec's
// chunked flow, following each Location the server hands back.
func chunkedUpload(ctx context.Context, s *server, data []byte, chunk int) (float64, error) {
	sum := sha256.Sum256(data)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	client := &http.Client{Transport: transport()}
	defer client.CloseIdleConnections()
	base, _ := url.Parse(s.URL())
	do := func(method, loc string, body []byte, hdr map[string]string, want int) (string, error) {
		u, err := base.Parse(loc)
		if err != nil {
			return "", err
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
		if err != nil {
			return "", err
		}
		req.ContentLength = int64(len(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if resp.StatusCode != want {
			return "", fmt.Errorf("%s %s: %s: %s", method, u.Path, resp.Status, msg)
		}
		return resp.Header.Get("Location"), nil
	}
	start := time.Now()
	loc, err := do(http.MethodPost, "/v2/chunked/app/blobs/uploads/", nil, nil, http.StatusAccepted)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", s.kind, err)
	}
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		loc, err = do(http.MethodPatch, loc, data[off:end], map[string]string{
			"Content-Type":  "application/octet-stream",
			"Content-Range": fmt.Sprintf("%d-%d", off, end-1),
		}, http.StatusAccepted)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s.kind, err)
		}
	}
	u, err := base.Parse(loc)
	if err != nil {
		return 0, err
	}
	q := u.Query()
	q.Set("digest", dgst)
	u.RawQuery = q.Encode()
	if _, err := do(http.MethodPut, u.String(), nil, nil, http.StatusCreated); err != nil {
		return 0, fmt.Errorf("%s: %w", s.kind, err)
	}
	return mbps(int64(len(data)), time.Since(start)), nil
}
