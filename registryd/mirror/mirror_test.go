package mirror

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// blobServer is the least of a registry: /v2/ and one blob; gets counts
// the blob GETs.
func blobServer(content []byte, gets *atomic.Int32) http.Handler {
	d := digest.FromBytes(content)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case r.URL.Path == "/v2/app/blobs/"+d.String():
			if r.Method == http.MethodGet {
				gets.Add(1)
			}
			w.Header().Set("Content-Length", "0")
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(content)))
		default:
			http.NotFound(w, r)
		}
	})
}

func newTestMirror(t *testing.T, up Upstream, b *blob.Bucket, leaseTTL time.Duration) *Mirror {
	t.Helper()
	m, err := New(&Config{Upstreams: []Upstream{up}}, b, tags.NewBucket(b),
		&Options{Logger: slog.New(slog.DiscardHandler), LeaseTTL: leaseTTL, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestLease: a replica that finds another's lease waits for its content,
// and takes over a lease its holder stopped renewing.
func TestLease(t *testing.T) {
	content := []byte("layer bytes")
	d := digest.FromBytes(content)
	for _, tc := range []struct {
		name string
		// holder plays the other replica: it has taken the lease.
		holder    func(ctx context.Context, b *blob.Bucket)
		wantGets  int32
		minWait   time.Duration
		leaseLeft bool
	}{
		{"the holder stores the content: no fetch here", func(ctx context.Context, b *blob.Bucket) {
			time.Sleep(200 * time.Millisecond)
			_ = b.WriteAll(ctx, storage.BlobKey(d), content, nil)
			_ = b.Delete(ctx, leaseKey(d))
		}, 0, 200 * time.Millisecond, false},
		{"the holder died: its lease expires and this one fetches", nil, 1, 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gets atomic.Int32
			srv := httptest.NewServer(blobServer(content, &gets))
			t.Cleanup(srv.Close)
			b := memblob.OpenBucket(nil)
			t.Cleanup(func() { _ = b.Close() })
			host := strings.TrimPrefix(srv.URL, "http://")
			m := newTestMirror(t, Upstream{Host: host, Endpoint: srv.URL}, b, time.Second)
			l, _ := json.Marshal(lease{Holder: "other", Expires: time.Now().Add(300 * time.Millisecond)})
			if err := b.WriteAll(t.Context(), leaseKey(d), l, nil); err != nil {
				t.Fatal(err)
			}
			holderDone := make(chan struct{})
			if tc.holder != nil {
				go func() { defer close(holderDone); tc.holder(context.WithoutCancel(t.Context()), b) }()
			} else {
				close(holderDone)
			}
			rt, err := m.Route(host, "app")
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := m.EnsureBlob(t.Context(), rt, d, nil); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start); waited < tc.minWait {
				t.Errorf("returned after %v, before the other replica could be done (%v)", waited, tc.minWait)
			}
			if got := gets.Load(); got != tc.wantGets {
				t.Errorf("upstream GETs %d, want %d", got, tc.wantGets)
			}
			// The holder removes its lease after storing the content, which
			// this replica may already have seen.
			<-holderDone
			if ok, _ := b.Exists(t.Context(), leaseKey(d)); ok != tc.leaseLeft {
				t.Errorf("lease left behind: %v", ok)
			}
			if got, _ := b.ReadAll(t.Context(), storage.BlobKey(d)); string(got) != string(content) {
				t.Errorf("stored %q", got)
			}
		})
	}
}

// TestCABundle: an upstream whose certificate no system root signs is
// reached with the caFile, and refused without it.
func TestCABundle(t *testing.T) {
	content := []byte("tls layer")
	var gets atomic.Int32
	srv := httptest.NewTLSServer(blobServer(content, &gets))
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "https://")
	d := digest.FromBytes(content)
	for _, tc := range []struct {
		name    string
		caFile  string
		wantErr error
	}{
		{"without the CA", "", ErrUpstreamUnavailable},
		{"with the CA", caFile, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := memblob.OpenBucket(nil)
			t.Cleanup(func() { _ = b.Close() })
			m := newTestMirror(t, Upstream{Host: host, Endpoint: srv.URL, CAFile: tc.caFile}, b, 0)
			rt, err := m.Route(host, "app")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.EnsureBlob(t.Context(), rt, d, nil); !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil {
				r, err := m.store.OpenBlob(t.Context(), d, 0, -1)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(r)
				r.Close()
				if string(got) != string(content) {
					t.Fatalf("stored %q", got)
				}
			}
		})
	}
}
