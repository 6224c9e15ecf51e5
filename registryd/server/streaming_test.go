package server

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"testing"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob/fileblob"
)

// content returns a reader of n deterministic pseudo-random bytes, so the
// test never holds the blob in memory either.
func content(n int64) io.Reader {
	var seed [32]byte
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// TestLargeBlobStreams pushes and pulls a 64 MiB blob and checks the
// process allocated far less than the blob's size: nothing buffers it.
func TestLargeBlobStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 128 MiB")
	}
	const size = 64 << 20
	b, err := fileblob.OpenBucket(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	r := serveBucket(t, b, nil)
	h := sha256.New()
	_, _ = io.Copy(h, content(size))
	d := digest.NewDigest(digest.SHA256, h)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	req, _ := http.NewRequestWithContext(t.Context(), "POST", r.url+"/v2/big/blobs/uploads/?digest="+d.String(), content(size))
	req.ContentLength = size
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get(r.url + "/v2/big/blobs/" + d.String())
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pull: %v %v", resp, err)
	}
	v := d.Verifier()
	n, _ := io.Copy(v, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)

	if n != size || !v.Verified() {
		t.Fatalf("pulled %d bytes, verified %v", n, v.Verified())
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB to push and pull %d MiB", alloc>>10, size>>20)
	if alloc > size/4 {
		t.Fatalf("allocated %d MiB moving a %d MiB blob: something buffers it", alloc>>20, size>>20)
	}
}
