package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestStorageOutage stops the S3 server in the middle of a blob push: the
// client gets 503 UNAVAILABLE in the spec's envelope with Retry-After,
// nothing partial appears under blobs/, and once the server is back the
// same push succeeds against the same registryd process.
func TestStorageOutage(t *testing.T) {
	srv := storageservers.Start(t, storageservers.S3)
	reg := startRegistrydEnv(t, srv.URL, srv.EnvList())
	content := make([]byte, 8<<20)
	_, _ = rand.Read(content)
	d := digest.FromBytes(content)
	push := func(body io.Reader) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, reg.url()+"/v2/outage/app/blobs/uploads/?digest="+d.String(), body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(content))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	// Half the blob, then the outage, then the rest.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(content[:len(content)/2])
		time.Sleep(300 * time.Millisecond) // registryd is streaming into the bucket
		srv.Stop()
		_, _ = pw.Write(content[len(content)/2:])
		_ = pw.Close()
	}()
	resp := push(pr)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("push during the outage: status %d, want 503; body %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	t.Logf("push during the outage: %d, Retry-After %s, %s", resp.StatusCode, resp.Header.Get("Retry-After"), bytes.TrimSpace(body))
	var envelope struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &envelope); err != nil || len(envelope.Errors) == 0 || envelope.Errors[0].Code != "UNAVAILABLE" {
		t.Fatalf("503 body is not the spec's UNAVAILABLE envelope: %s", body)
	}
	// A pull during the outage is refused the same way.
	resp, err := http.Get(reg.url() + "/v2/outage/app/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("tags list during the outage: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	assertBlobsWhole(t, srv.BucketDir())

	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp = push(bytes.NewReader(content))
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push after the outage: status %d; body %s", resp.StatusCode, body)
	}
	resp, err = http.Get(reg.url() + "/v2/outage/app/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, content) {
		t.Fatalf("pulled %d bytes that differ from the %d pushed", len(got), len(content))
	}
	assertBlobsWhole(t, srv.BucketDir())
}

// assertBlobsWhole checks every object under blobs/ holds exactly the
// content its name is the digest of.
func assertBlobsWhole(t *testing.T, bucketDir string) {
	t.Helper()
	root := filepath.Join(bucketDir, "blobs")
	n := 0
	_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		n++
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if want := filepath.Base(p); !strings.EqualFold(hex.EncodeToString(sum[:]), want) {
			t.Fatalf("%s holds %d bytes that do not hash to its name", p, len(b))
		}
		return nil
	})
	t.Logf("%d objects under blobs/, each whole", n)
}
