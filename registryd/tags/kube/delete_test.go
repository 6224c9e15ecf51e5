package kube_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/server"
	"github.com/stevedore-dev/stevedore/registryd/tags"
)

// TestDeleteManifestWithImmutableTag: a manifest DELETE by digest through
// the server, refused because an immutable tag points at the manifest,
// answers DENIED and leaves the manifest linked: the tag still resolves.
func TestDeleteManifestWithImmutableTag(t *testing.T) {
	reg := newRegistry(t, nil)
	bucket := memblob.OpenBucket(nil)
	t.Cleanup(func() { bucket.Close() })
	s := replica(t, reg, tags.NewBucket(bucket))
	createRepository(t, reg, "app", ".*")
	srv := httptest.NewServer(server.New(bucket, s, &server.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	config := pushBlob(t, srv.URL, "app", []byte("{}"))
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[]}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, config))
	if err := putManifest(srv.URL, "app", "v1", body); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/v2/app/manifests/"+digest.FromBytes(body).String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("DELETE of a manifest an immutable tag points at: %s, want 403", resp.Status)
	}
	get, err := http.Get(srv.URL + "/v2/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	get.Body.Close()
	if get.StatusCode != http.StatusOK {
		t.Fatalf("after the refused DELETE, GET of the immutable tag: %s, want 200", get.Status)
	}
}
