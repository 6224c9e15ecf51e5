package server

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"
)

// TestBlobRedirect: with RedirectTTL, a backend that signs URLs gets the
// client redirected; one that cannot keeps serving the bytes.
func TestBlobRedirect(t *testing.T) {
	base, _ := url.Parse("https://objects.example/signed")
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{URLSigner: fileblob.NewURLSignerHMAC(base, []byte("k"))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	signing := serveBucket(t, b, &Options{RedirectTTL: time.Minute})
	plain := newTestRegistry(t, &Options{RedirectTTL: time.Minute}) // memblob: cannot sign
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	for _, tt := range []struct {
		name   string
		r      *testRegistry
		status int
	}{{"signing backend", signing, 307}, {"backend without signing", plain, 200}} {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.r.pushBlob("app", []byte("redirect me"))
			resp, err := client.Get(tt.r.url + "/v2/app/blobs/" + d.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			loc := resp.Header.Get("Location")
			if resp.StatusCode != tt.status || resp.Header.Get("Docker-Content-Digest") != d.String() {
				t.Fatalf("status %d, digest %q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
			}
			if tt.status == 307 && !strings.HasPrefix(loc, base.String()) {
				t.Fatalf("Location %q is not a signed URL", loc)
			}
			// Unlinked blobs are never redirected to.
			tt.r.expect(tt.r.do("GET", "/v2/other/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
		})
	}
}

// TestRedirectUnsupportedLoggedOnce: with redirects on over a backend that
// cannot sign, every blob GET is served by registryd and the reason is
// logged once, not once per request.
func TestRedirectUnsupportedLoggedOnce(t *testing.T) {
	var logs bytes.Buffer
	r := newTestRegistry(t, &Options{RedirectTTL: time.Minute, Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))})
	for i := range 3 {
		d := r.pushBlob("app", []byte(fmt.Sprintf("blob %d", i)))
		r.expect(r.do("GET", "/v2/app/blobs/"+d.String(), nil), 200, "")
	}
	if n := strings.Count(logs.String(), "cannot sign URLs"); n != 1 {
		t.Fatalf("logged %d times that the storage cannot sign, want once:\n%s", n, logs.String())
	}
}

// syncWriter serializes writes from concurrent handlers.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
