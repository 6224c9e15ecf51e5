package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// BenchmarkStorage measures registryd's blob push and pull throughput on
// each backend next to the file backend (MB/s from b.SetBytes): push is a
// monolithic POST ?digest=, pull a GET streamed by registryd, and
// pull-redirect a GET that follows the 307 to the backend's signed URL.
// hack/bench-storage.sh prints it as a table. BENCH_STORAGE_MB sets the
// blob size (default 32).
func BenchmarkStorage(b *testing.B) {
	size := 32 << 20
	if mb := os.Getenv("BENCH_STORAGE_MB"); mb != "" {
		var n int
		if _, err := fmt.Sscan(mb, &n); err == nil && n > 0 {
			size = n << 20
		}
	}
	for _, kind := range []string{"file", "s3", "azure", "gcs"} {
		b.Run(kind, func(b *testing.B) {
			url, env := "file://"+b.TempDir(), []string(nil)
			if kind != "file" {
				srv := storageservers.Start(b, storageservers.Kind(kind))
				url, env = srv.URL, srv.EnvList()
			}
			plain := startRegistrydEnv(b, url, env)
			redirecting := startRegistrydEnv(b, url, env, "--redirect-ttl=5m")
			content := make([]byte, size)
			_, _ = rand.Read(content)
			var pushed []digest.Digest
			// Each push is new content (a counter in the first bytes), so
			// none takes the "already stored" shortcut.
			next := func() digest.Digest {
				binary.BigEndian.PutUint64(content, uint64(len(pushed)+1)<<32|uint64(os.Getpid()))
				return digest.FromBytes(content)
			}
			b.Run("push", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					b.StopTimer()
					d := next()
					b.StartTimer()
					req, _ := http.NewRequest(http.MethodPost, plain.url()+"/v2/bench/blobs/uploads/?digest="+d.String(), bytes.NewReader(content))
					req.Header.Set("Content-Type", "application/octet-stream")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						b.Fatalf("push: status %d", resp.StatusCode)
					}
					pushed = append(pushed, d)
				}
			})
			if len(pushed) == 0 {
				b.Fatal("nothing pushed")
			}
			pull := func(b *testing.B, reg *registry) {
				b.SetBytes(int64(size))
				i := 0
				for b.Loop() {
					d := pushed[i%len(pushed)]
					i++
					resp, err := http.Get(reg.url() + "/v2/bench/blobs/" + d.String())
					if err != nil {
						b.Fatal(err)
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || n != int64(size) {
						b.Fatalf("pull: status %d, %d bytes", resp.StatusCode, n)
					}
				}
			}
			b.Run("pull", func(b *testing.B) { pull(b, plain) })
			if kind != "file" {
				b.Run("pull-redirect", func(b *testing.B) { pull(b, redirecting) })
			}
		})
	}
}
