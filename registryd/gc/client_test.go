package gc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// env is a bucket and registryd replicas serving it, each over a bucket
// handle of its own, as separate processes would be.
type env struct {
	dir     string // the file bucket's directory; "" on S3
	bucket  *blob.Bucket
	servers []string
}

func newEnv(t *testing.T, replicas int, opts server.Options) *env {
	t.Helper()
	dir := t.TempDir()
	e := newEnvOver(t, replicas, opts, func() *blob.Bucket { return openBucket(t, dir) })
	e.dir = dir
	return e
}

// newEnvOver is newEnv over the buckets open returns: one per replica and
// one for the test, all on the same storage.
func newEnvOver(t *testing.T, replicas int, opts server.Options, open func() *blob.Bucket) *env {
	t.Helper()
	e := &env{bucket: open()}
	if opts.Logger == nil {
		// Errors only (a 500 says why), into the test's log.
		w := &testLog{t: t}
		t.Cleanup(func() { w.done.Store(true) }) // runs last: after the servers close
		opts.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	opts.Secret = []byte("shared secret of the replicas")
	for range replicas {
		b := open()
		srv := httptest.NewServer(server.New(b, tags.NewBucket(b), &opts))
		t.Cleanup(srv.Close)
		e.servers = append(e.servers, srv.URL)
	}
	return e
}

func openBucket(t *testing.T, dir string) *blob.Bucket {
	t.Helper()
	b, err := bucket.Open(context.Background(), "file://"+dir+"?metadata=skip", bucket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// age moves the modification time of every file in the bucket back by d,
// as if it had all been written d earlier.
func (e *env) age(t *testing.T, d time.Duration) {
	t.Helper()
	err := filepath.WalkDir(e.dir, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		return os.Chtimes(p, info.ModTime().Add(-d), info.ModTime().Add(-d))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// keys is every key of the bucket, sorted.
func (e *env) keys(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	it := e.bucket.List(nil)
	for {
		o, err := it.Next(context.Background())
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[o.Key] = true
	}
}

// client speaks to one replica and returns errors, for goroutines.
type client struct{ url string }

type apiError struct {
	status int
	code   string
	body   string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.body) }

// do sends a request and reads its answer; 503 (a storage hiccup the
// server calls transient) is retried after its Retry-After, up to four
// times, as ggcr, containerd and docker retry it.
func (c client) do(ctx context.Context, method, path string, body []byte, want int, header ...string) (*http.Response, []byte, error) {
	u := path
	if !strings.HasPrefix(u, "http") {
		u = c.url + path
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return resp, nil, err
		}
		if resp.StatusCode == http.StatusServiceUnavailable && want != http.StatusServiceUnavailable && attempt < 4 {
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			select {
			case <-ctx.Done():
				return resp, b, ctx.Err()
			case <-time.After(time.Duration(max(wait, 0))*time.Second + 50*time.Millisecond):
			}
			continue
		}
		if resp.StatusCode != want {
			var env struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			e := &apiError{status: resp.StatusCode, body: string(b)}
			if json.Unmarshal(b, &env) == nil && len(env.Errors) > 0 {
				e.code = env.Errors[0].Code
			}
			return resp, b, fmt.Errorf("%s %s: %w", method, path, e)
		}
		return resp, b, nil
	}
}

// exists is a HEAD on a blob: what a client asks before skipping an upload.
func (c client) exists(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	resp, _, err := c.do(ctx, "HEAD", "/v2/"+repo+"/blobs/"+d.String(), nil, http.StatusOK)
	if resp != nil && resp.StatusCode == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// pushBlob uploads content in a POST and a PUT, as most clients do.
func (c client) pushBlob(ctx context.Context, repo string, content []byte) error {
	resp, _, err := c.do(ctx, "POST", "/v2/"+repo+"/blobs/uploads/", nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	loc := resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	_, _, err = c.do(ctx, "PUT", loc+sep+"digest="+digest.FromBytes(content).String(), content, http.StatusCreated)
	return err
}

// image is a config and layers.
type image struct {
	config []byte
	layers [][]byte
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func newImage(shared ...[]byte) image {
	img := image{config: []byte(`{"architecture":"amd64","os":"linux","rand":"` + digest.FromBytes(randomBytes(8)).Encoded() + `"}`)}
	img.layers = append(img.layers, shared...)
	img.layers = append(img.layers, randomBytes(512))
	return img
}

func (img image) manifest() []byte {
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(img.config), Size: int64(len(img.config))},
		Layers:    []ocispec.Descriptor{},
	}
	m.SchemaVersion = 2
	for _, l := range img.layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(l), Size: int64(len(l))})
	}
	b, _ := json.Marshal(m)
	return b
}

func (img image) digest() digest.Digest { return digest.FromBytes(img.manifest()) }

func (img image) blobs() [][]byte { return append([][]byte{img.config}, img.layers...) }

// push pushes img under ref, skipping every blob a HEAD says exists, as
// docker, crane and containerd do.
func (c client) push(ctx context.Context, repo, ref string, img image) error {
	for _, b := range img.blobs() {
		ok, err := c.exists(ctx, repo, digest.FromBytes(b))
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		if err := c.pushBlob(ctx, repo, b); err != nil {
			return err
		}
	}
	return c.putManifest(ctx, repo, ref, ocispec.MediaTypeImageManifest, img.manifest())
}

func (c client) putManifest(ctx context.Context, repo, ref, mediaType string, m []byte) error {
	_, _, err := c.do(ctx, "PUT", "/v2/"+repo+"/manifests/"+ref, m, http.StatusCreated, "Content-Type", mediaType)
	return err
}

// pull fetches the manifest ref and every blob it names, checking digests.
func (c client) pull(ctx context.Context, repo, ref string) error {
	_, m, err := c.do(ctx, "GET", "/v2/"+repo+"/manifests/"+ref, nil, http.StatusOK, "Accept", ocispec.MediaTypeImageManifest)
	if err != nil {
		return err
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(m, &man); err != nil {
		return err
	}
	for _, d := range append([]ocispec.Descriptor{man.Config}, man.Layers...) {
		_, b, err := c.do(ctx, "GET", "/v2/"+repo+"/blobs/"+d.Digest.String(), nil, http.StatusOK)
		if err != nil {
			return err
		}
		if digest.FromBytes(b) != d.Digest {
			return fmt.Errorf("blob %s of %s:%s has the wrong bytes", d.Digest, repo, ref)
		}
	}
	return nil
}

func (c client) deleteManifest(ctx context.Context, repo string, d digest.Digest) error {
	_, _, err := c.do(ctx, "DELETE", "/v2/"+repo+"/manifests/"+d.String(), nil, http.StatusAccepted)
	return err
}

func (c client) deleteTag(ctx context.Context, repo, tag string) error {
	_, _, err := c.do(ctx, "DELETE", "/v2/"+repo+"/manifests/"+tag, nil, http.StatusAccepted)
	return err
}

// testLog writes registryd's log lines into the test's log while it runs.
type testLog struct {
	t    *testing.T
	done atomic.Bool
}

func (l *testLog) Write(p []byte) (int, error) {
	if !l.done.Load() {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}
