package mirror

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob/fileblob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// flushRecorder is the first client: what it was sent, and whether the
// response was flushed once complete.
type flushRecorder struct {
	bytes.Buffer
	flushedAt int
}

func (f *flushRecorder) Flush() error { f.flushedAt = f.Len(); return nil }

// TestStreamAndStore: the first client gets the blob whole (and flushed)
// as soon as its digest verifies, not once the store is done: even a
// store that fails after the content leaves the client served (the cache
// fetches it again later). Content that does not verify never reaches the
// client whole, and nothing is stored.
func TestStreamAndStore(t *testing.T) {
	content := make([]byte, 3<<20+12345) // several chunks, the last one short
	_, _ = rand.Read(content)
	d := digest.FromBytes(content)
	for _, tc := range []struct {
		name      string
		served    []byte // what the upstream sends for d
		breakLink bool   // the store fails after the content (its repository link)
		wantWhole bool
		wantErr   error
		wantBlob  bool
	}{
		{"verified and stored", content, false, true, nil, true},
		{"verified, the store fails after: the client is served", content, true, true, nil, false},
		{"does not verify: cut short, nothing stored", bytes.Repeat([]byte{1}, len(content)), false, false, storage.ErrDigestMismatch, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/app/blobs/"+d.String() {
					http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(tc.served))
					return
				}
				w.WriteHeader(http.StatusOK)
			}))
			t.Cleanup(srv.Close)
			dir := t.TempDir()
			b, err := fileblob.OpenBucket(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			host := strings.TrimPrefix(srv.URL, "http://")
			m := newTestMirror(t, Upstream{Host: host, Endpoint: srv.URL}, b, time.Second)
			rt, err := m.Route(host, "app")
			if err != nil {
				t.Fatal(err)
			}
			if tc.breakLink {
				// A directory, not empty, where the repository's link to
				// the blob goes: the link cannot be written.
				p := filepath.Join(dir, filepath.FromSlash(storage.RepoPrefix(rt.Local)), "_layers", d.Algorithm().String(), d.Encoded(), "x")
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("in the way"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			client := &flushRecorder{}
			streamed, err := m.EnsureBlob(t.Context(), rt, d, func(int64) io.Writer { return client })
			if !streamed || !errors.Is(err, tc.wantErr) {
				t.Fatalf("EnsureBlob: streamed %v, %v; want streamed, %v", streamed, err, tc.wantErr)
			}
			whole := bytes.Equal(client.Bytes(), content)
			if whole != tc.wantWhole || (whole && client.flushedAt != len(content)) {
				t.Fatalf("client got %d of %d bytes (the content: %v), flushed at %d; want whole: %v",
					client.Len(), len(content), whole, client.flushedAt, tc.wantWhole)
			}
			if !tc.wantWhole && client.Len() >= len(content) {
				t.Fatalf("the client got %d bytes of content that does not verify", client.Len())
			}
			if ok, _ := b.Exists(t.Context(), storage.BlobKey(d)); ok != tc.wantBlob && !tc.breakLink {
				t.Fatalf("blob stored: %v, want %v", ok, tc.wantBlob)
			}
		})
	}
}
