package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestUploadAcrossProcesses runs three registryd processes over one file
// bucket, sends each PATCH of one upload to a different process, and pulls
// the blob from a fourth: the bytes must be identical.
func TestUploadAcrossProcesses(t *testing.T) {
	t.Parallel()
	storage := "file://" + t.TempDir()
	var procs []*registry
	for range 4 {
		procs = append(procs, startRegistryd(t, storage))
	}
	content := make([]byte, 5<<20+777)
	_, _ = rand.Read(content)
	d := digest.FromBytes(content)

	resp := do(t, "POST", procs[0].url()+"/v2/e2e/replicas/blobs/uploads/", nil, nil, 202)
	loc := resp.Header.Get("Location")
	chunk := len(content)/6 + 1
	for i, start := 0, 0; start < len(content); i, start = i+1, start+chunk {
		end := min(start+chunk, len(content))
		hdr := map[string]string{"Content-Range": fmt.Sprintf("%d-%d", start, end-1), "Content-Type": "application/octet-stream"}
		resp = do(t, "PATCH", on(procs[i%3], loc), content[start:end], hdr, 202)
		loc = resp.Header.Get("Location")
	}
	u, _ := url.Parse(on(procs[2], loc))
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	do(t, "PUT", u.String(), nil, nil, 201)

	get := do(t, "GET", procs[3].url()+"/v2/e2e/replicas/blobs/"+d.String(), nil, nil, 200)
	got, _ := io.ReadAll(get.Body)
	if !bytes.Equal(got, content) {
		t.Fatalf("pulled %d bytes from the fourth process, not identical to the %d pushed", len(got), len(content))
	}
}

// on rewrites a Location (absolute path) to point at process r.
func on(r *registry, loc string) string {
	u, _ := url.Parse(loc)
	u.Scheme, u.Host = "http", r.host
	return u.String()
}

func do(t *testing.T, method, u string, body []byte, hdr map[string]string, want int) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: %d %s, want %d", method, u, resp.StatusCode, b, want)
	}
	return resp
}
