package e2e

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/internal/testutil"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestRedirectPull: with --redirect-ttl, crane pulls a multi-layer image
// from each cloud backend and every layer comes from a signed URL, so
// registryd's bytes-out metric for blobs grows by (next to) nothing while
// the image's layers are megabytes.
func TestRedirectPull(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	for _, kind := range storageservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := storageservers.Start(t, kind)
			debug := testutil.FreeAddr(t)
			reg := startRegistrydEnv(t, srv.URL, srv.EnvList(), "--redirect-ttl=5m", "--debug-addr", debug)
			home := t.TempDir()
			const layers, layerSize = 3, 1 << 20
			var files []string
			for i := range layers {
				// Random bytes: gzip cannot shrink them, so the pushed
				// layers really are about layerSize each.
				content := make([]byte, layerSize)
				_, _ = rand.Read(content)
				p := filepath.Join(home, fmt.Sprintf("layer%d.tar", i))
				writeLayerTar(t, p, map[string]string{fmt.Sprintf("file%d", i): string(content)})
				files = append(files, "-f", p)
			}
			ref := reg.host + "/redirect/" + string(kind) + ":v1"
			run(t, home, crane, append([]string{"append", "--insecure", "-t", ref}, files...)...)

			before := scrape(t, debug)
			out := filepath.Join(home, "pulled.tar")
			run(t, home, crane, "pull", "--insecure", ref, out)
			after := scrape(t, debug)
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() < layers*layerSize {
				t.Fatalf("pulled image is %d bytes, want at least %d", st.Size(), layers*layerSize)
			}
			blobBytes := after[`registryd_http_response_bytes_total{route="blob"}`] - before[`registryd_http_response_bytes_total{route="blob"}`]
			redirects := after[`registryd_http_requests_total{method="GET",route="blob",status="307"}`] - before[`registryd_http_requests_total{method="GET",route="blob",status="307"}`]
			t.Logf("%s: pulled %d bytes; registryd served %v blob bytes and %v redirects", kind, st.Size(), blobBytes, redirects)
			if redirects < layers+1 { // the layers and the config
				t.Fatalf("%v blob GETs redirected, want %d", redirects, layers+1)
			}
			if blobBytes != 0 {
				t.Fatalf("registryd served %v blob bytes itself; with redirects it should serve none", blobBytes)
			}
			assertNotRedirected(t, reg, "/v2/redirect/"+string(kind)+"/manifests/v1", http.MethodGet)
			assertNotRedirected(t, reg, "/v2/redirect/"+string(kind)+"/manifests/v1", http.MethodHead)
			config := strings.TrimSpace(run(t, home, crane, "config", "--insecure", ref))
			assertNotRedirected(t, reg, "/v2/redirect/"+string(kind)+"/blobs/"+digest.FromString(config).String(), http.MethodHead)
		})
	}
}

// assertNotRedirected: HEAD requests and manifests are always answered by
// registryd itself (a redirect would cost a client a second round trip for
// a few bytes, and manifests carry the tag's media type).
func assertNotRedirected(t *testing.T, reg *registry, path, method string) {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(method, reg.url()+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: status %d, want 200 from registryd itself", method, path, resp.StatusCode)
	}
}

// scrape reads registryd's /metrics into "name{labels}" -> value, labels
// as Prometheus writes them (sorted).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// TestReadyzMissingBucket: registryd pointed at a bucket that does not
// exist is not ready, on every backend; the same server's real bucket is.
func TestReadyzMissingBucket(t *testing.T) {
	t.Parallel()
	for _, kind := range storageservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := storageservers.Start(t, kind)
			missing := strings.Replace(srv.URL, "://"+storageservers.Bucket, "://no-such-bucket", 1)
			if missing == srv.URL {
				t.Fatalf("cannot rename the bucket in %s", srv.URL)
			}
			for url, want := range map[string]int{srv.URL: http.StatusOK, missing: http.StatusServiceUnavailable} {
				debug := testutil.FreeAddr(t)
				startRegistrydEnv(t, url, srv.EnvList(), "--debug-addr", debug)
				resp, err := http.Get("http://" + debug + "/readyz")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("/readyz on %s: %d, want %d", url, resp.StatusCode, want)
				}
			}
		})
	}
}
