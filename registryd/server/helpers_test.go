package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// testRegistry is one server over a memblob bucket the test can inspect.
type testRegistry struct {
	t      *testing.T
	bucket *blob.Bucket
	url    string
}

func newTestRegistry(t *testing.T, opts *Options) *testRegistry {
	t.Helper()
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { _ = b.Close() })
	return serveBucket(t, b, opts)
}

func serveBucket(t *testing.T, b *blob.Bucket, opts *Options) *testRegistry {
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	srv := httptest.NewUnstartedServer(New(b, tags.NewBucket(b), &o))
	srv.Config.ConnContext = ConnContext
	srv.Start()
	t.Cleanup(srv.Close)
	return &testRegistry{t: t, bucket: b, url: srv.URL}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; path may be absolute (a Location) or relative.
func (r *testRegistry) do(method, path string, body []byte, header ...string) response {
	r.t.Helper()
	u := path
	if !strings.HasPrefix(u, "http") {
		u = r.url + path
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.t.Context(), method, u, rd)
	if err != nil {
		r.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// errorCode is the first code of an error envelope ("" if none).
func (resp response) errorCode() string {
	var env struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if json.Unmarshal(resp.body, &env) != nil || len(env.Errors) == 0 {
		return ""
	}
	return env.Errors[0].Code
}

func (r *testRegistry) expect(resp response, status int, code string) {
	r.t.Helper()
	if resp.status != status || resp.errorCode() != code {
		r.t.Fatalf("got %d %q (%s), want %d %q", resp.status, resp.errorCode(), resp.body, status, code)
	}
}

// pushBlob pushes content monolithically and returns its digest.
func (r *testRegistry) pushBlob(repo string, content []byte) digest.Digest {
	r.t.Helper()
	d := digest.FromBytes(content)
	resp := r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), content)
	r.expect(resp, http.StatusCreated, "")
	return d
}

// imageManifest builds an OCI image manifest over already pushed blobs.
func imageManifest(config []byte, layers ...[]byte) []byte {
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{},
	}
	m.SchemaVersion = 2
	for _, l := range layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(l), Size: int64(len(l))})
	}
	b, _ := json.Marshal(m)
	return b
}

// pushImage pushes a config, layers and the manifest under tag.
func (r *testRegistry) pushImage(repo, tag string, config []byte, layers ...[]byte) digest.Digest {
	r.t.Helper()
	r.pushBlob(repo, config)
	for _, l := range layers {
		r.pushBlob(repo, l)
	}
	m := imageManifest(config, layers...)
	resp := r.do("PUT", "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", ocispec.MediaTypeImageManifest)
	r.expect(resp, http.StatusCreated, "")
	return digest.FromBytes(m)
}

// keys lists every object key under prefix.
func keys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var out []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(context.Background())
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, obj.Key)
	}
}
