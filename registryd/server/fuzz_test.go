package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// FuzzHandler sends arbitrary requests (method, path, query, headers, body)
// to the whole handler over memblob and the bucket tag store, which the
// seeds fill with a repository, blobs, an image and an upload in progress.
// No answer may be a 5xx but 503 (a retryable backend failure), and no
// handler may panic (a recovered panic is a 500 and is counted).
func FuzzHandler(f *testing.F) {
	b := memblob.OpenBucket(nil)
	f.Cleanup(func() { _ = b.Close() })
	reg := prometheus.NewRegistry()
	h := New(b, tags.NewBucket(b), &Options{
		Logger: slog.New(slog.DiscardHandler), Registerer: reg, Secret: []byte("fuzz"), PageSize: 50, MaxManifestBytes: 64 << 10,
	})
	send := func(method, path, query, header string, body []byte) *httptest.ResponseRecorder {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r := &http.Request{
			Method: method, URL: &url.URL{Path: path, RawQuery: query}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Host: "registry.test", RemoteAddr: "127.0.0.1:1234", RequestURI: path,
			Body: http.NoBody,
		}
		for _, line := range strings.Split(header, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				r.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		if len(body) > 0 {
			r.Body, r.ContentLength = httpBody(body), int64(len(body))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r.WithContext(ctx))
		return w
	}

	// State for the seeds to reach: a blob, an image, an upload.
	layer, config := []byte("fuzz layer"), []byte("{}")
	for _, c := range [][]byte{layer, config} {
		if w := send("POST", "/v2/fuzz/app/blobs/uploads/", "digest="+digest.FromBytes(c).String(), "", c); w.Code != 201 {
			f.Fatalf("seeding a blob: %d %s", w.Code, w.Body)
		}
	}
	manifest := imageManifest(config, layer)
	md := digest.FromBytes(manifest)
	if w := send("PUT", "/v2/fuzz/app/manifests/v1", "", "Content-Type: "+ocispec.MediaTypeImageManifest, manifest); w.Code != 201 {
		f.Fatalf("seeding a manifest: %d %s", w.Code, w.Body)
	}
	w := send("POST", "/v2/fuzz/app/blobs/uploads/", "", "", nil)
	loc, _ := url.Parse(w.Header().Get("Location"))

	ld := digest.FromBytes(layer).String()
	for _, s := range []struct {
		method, path, query, header string
		body                        []byte
	}{
		{"GET", "/v2/", "", "", nil},
		{"GET", "/v2/_catalog", "n=0", "", nil},
		{"GET", "/v2/_catalog", "n=1&last=fuzz", "", nil},
		{"GET", "/v2/fuzz/app/tags/list", "n=1&last=v0", "", nil},
		{"GET", "/v2/fuzz/tags/list", "", "", nil},
		{"HEAD", "/v2/fuzz/app/manifests/v1", "", "Accept: " + ocispec.MediaTypeImageManifest, nil},
		{"GET", "/v2/fuzz/app/manifests/" + md.String(), "", "", nil},
		{"PUT", "/v2/fuzz/app/manifests/v2", "", "Content-Type: " + ocispec.MediaTypeImageManifest, manifest},
		{"PUT", "/v2/fuzz/app/manifests/" + md.String(), "tag=a&tag=b", "Content-Type: " + ocispec.MediaTypeImageIndex, []byte(`{"schemaVersion":2,"manifests":[{}]}`)},
		{"DELETE", "/v2/fuzz/app/manifests/v1", "", "", nil},
		{"GET", "/v2/fuzz/app/blobs/" + ld, "", "Range: bytes=2-5", nil},
		{"GET", "/v2/fuzz/app/blobs/" + ld, "", "Range: bytes=-3", nil},
		{"DELETE", "/v2/fuzz/app/blobs/" + md.String(), "", "", nil},
		{"POST", "/v2/fuzz/other/blobs/uploads/", "mount=" + ld + "&from=fuzz/app", "", nil},
		{"POST", "/v2/fuzz/app/blobs/uploads/", "digest=sha512:" + strings.Repeat("ab", 64), "", []byte("x")},
		{"PATCH", loc.Path, loc.RawQuery, "Content-Range: 0-3\nContent-Type: application/octet-stream", []byte("abcd")},
		{"PUT", loc.Path, loc.RawQuery + "&digest=" + digest.FromString("abcd").String(), "Content-Range: 4-5", []byte("ef")},
		{"GET", loc.Path, loc.RawQuery, "", nil},
		{"DELETE", loc.Path, loc.RawQuery, "", nil},
		{"GET", "/v2/fuzz/app/referrers/" + md.String(), "artifactType=x&n=1", "", nil},
		{"GET", "/v2/fuzz/app/referrers/" + md.String(), "n=1&page=AAAA.BBBB", "", nil},
		{"OPTIONS", "/v2/fuzz/app/manifests/v1", "", "", nil},
		{"GET", "/v2/../../etc/passwd/manifests/x", "", "", nil},
	} {
		f.Add(s.method, s.path, s.query, s.header, s.body)
	}
	f.Fuzz(func(t *testing.T, method, path, query, header string, body []byte) {
		if !validMethod(method) || !strings.HasPrefix(path, "/") {
			t.Skip() // net/http never hands a handler these
		}
		w := send(method, path, query, header, body)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s?%s (headers %q, %d bytes): %d %s", method, path, query, header, len(body), w.Code, w.Body)
		}
		if n := counterValue(t, reg, "registryd_panics_total"); n != 0 {
			t.Fatalf("%s %s?%s: %v panics", method, path, query, n)
		}
	})
}

func httpBody(b []byte) *readCloser { return &readCloser{bytes.NewReader(b)} }

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// validMethod: an HTTP token, as net/http requires of a request's method.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}
