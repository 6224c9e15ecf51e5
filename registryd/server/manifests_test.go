package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/registryd/manifest"
)

func TestManifestRoundTripByteExact(t *testing.T) {
	cfg, layer := []byte(`{"architecture":"amd64"}`), []byte("layer")
	// Odd spacing and key order must survive: the digest is of these bytes.
	oci := fmt.Sprintf(`{ "schemaVersion":2,  "mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}] }`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, digest.FromBytes(cfg), len(cfg),
		ocispec.MediaTypeImageLayerGzip, digest.FromBytes(layer), len(layer))
	docker := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":%q,"size":%d},"layers":[]}`,
		manifest.MediaTypeDockerManifest, digest.FromBytes(cfg), len(cfg))
	tests := []struct {
		name, mediaType, body string
	}{
		{"oci image", ocispec.MediaTypeImageManifest, oci},
		{"docker schema2", manifest.MediaTypeDockerManifest, docker},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, nil)
			r.pushBlob("app", cfg)
			r.pushBlob("app", layer)
			put := r.do("PUT", "/v2/app/manifests/v1", []byte(tt.body), "Content-Type", tt.mediaType)
			r.expect(put, 201, "")
			d := digest.FromString(tt.body)
			if put.header.Get("Docker-Content-Digest") != d.String() || put.header.Get("Location") != "/v2/app/manifests/"+d.String() {
				t.Fatalf("PUT headers: %v", put.header)
			}
			for _, ref := range []string{"v1", d.String()} {
				get := r.do("GET", "/v2/app/manifests/"+ref, nil, "Accept", tt.mediaType)
				r.expect(get, 200, "")
				if string(get.body) != tt.body || get.header.Get("Content-Type") != tt.mediaType || get.header.Get("Docker-Content-Digest") != d.String() {
					t.Fatalf("GET %s: %q %v", ref, get.body, get.header)
				}
				head := r.do("HEAD", "/v2/app/manifests/"+ref, nil)
				if head.status != 200 || head.header.Get("Content-Length") != fmt.Sprint(len(tt.body)) {
					t.Fatalf("HEAD %s: %d %v", ref, head.status, head.header)
				}
			}
		})
	}
}

// TestManifestAsBlob: like distribution, a manifest can be fetched through
// the blob endpoint of its repository (some clients do).
func TestManifestAsBlob(t *testing.T) {
	r := newTestRegistry(t, nil)
	d := r.pushImage("app", "v1", []byte("{}"))
	get := r.do("GET", "/v2/app/blobs/"+d.String(), nil)
	r.expect(get, 200, "")
	if digest.FromBytes(get.body) != d {
		t.Fatal("blob endpoint returned other bytes than the manifest")
	}
	r.expect(r.do("GET", "/v2/other/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
}

func indexOf(children ...ocispec.Descriptor) []byte {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: children}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	return b
}

func TestIndexRequiresChildren(t *testing.T) {
	r := newTestRegistry(t, nil)
	child := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    r.pushImage("app", "child", []byte("{}")),
		Size:      int64(len(imageManifest([]byte("{}")))),
	}
	r.expect(r.do("PUT", "/v2/app/manifests/multi", indexOf(child), "Content-Type", ocispec.MediaTypeImageIndex), 201, "")
	missing := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("no such manifest"), Size: 16}
	r.expect(r.do("PUT", "/v2/app/manifests/broken", indexOf(child, missing), "Content-Type", ocispec.MediaTypeImageIndex), 400, "MANIFEST_BLOB_UNKNOWN")
	wrongSize := child
	wrongSize.Size++
	r.expect(r.do("PUT", "/v2/app/manifests/broken", indexOf(wrongSize), "Content-Type", ocispec.MediaTypeImageIndex), 400, "MANIFEST_INVALID")
	// A child of another repository is not a child of this one.
	r.expect(r.do("PUT", "/v2/other/manifests/multi", indexOf(child), "Content-Type", ocispec.MediaTypeImageIndex), 400, "MANIFEST_BLOB_UNKNOWN")
}

func TestPutByDigestWithTagParams(t *testing.T) {
	r := newTestRegistry(t, nil)
	cfg := []byte("{}")
	r.pushBlob("app", cfg)
	m := imageManifest(cfg)
	d := digest.FromBytes(m)
	put := r.do("PUT", "/v2/app/manifests/"+d.String()+"?tag=1.2.3&tag=latest", m, "Content-Type", ocispec.MediaTypeImageManifest)
	r.expect(put, 201, "")
	if got := put.header.Values("OCI-Tag"); !slices.Equal(got, []string{"1.2.3", "latest"}) {
		t.Fatalf("OCI-Tag = %v", got)
	}
	for _, tag := range []string{"1.2.3", "latest"} {
		if get := r.do("HEAD", "/v2/app/manifests/"+tag, nil); get.header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("tag %s -> %q", tag, get.header.Get("Docker-Content-Digest"))
		}
	}
}

func TestManifestDelete(t *testing.T) {
	r := newTestRegistry(t, nil)
	d := r.pushImage("app", "v1", []byte("{}"))
	r.expect(r.do("PUT", "/v2/app/manifests/v2", imageManifest([]byte("{}")), "Content-Type", ocispec.MediaTypeImageManifest), 201, "")
	// Delete by tag removes only that tag.
	r.expect(r.do("DELETE", "/v2/app/manifests/v1", nil), 202, "")
	r.expect(r.do("GET", "/v2/app/manifests/v1", nil), 404, "MANIFEST_UNKNOWN")
	r.expect(r.do("GET", "/v2/app/manifests/v2", nil), 200, "")
	// Delete by digest removes the manifest and the tags pointing at it.
	r.expect(r.do("DELETE", "/v2/app/manifests/"+d.String(), nil), 202, "")
	r.expect(r.do("GET", "/v2/app/manifests/"+d.String(), nil), 404, "MANIFEST_UNKNOWN")
	r.expect(r.do("GET", "/v2/app/manifests/v2", nil), 404, "MANIFEST_UNKNOWN")
	r.expect(r.do("DELETE", "/v2/app/manifests/"+d.String(), nil), 404, "MANIFEST_UNKNOWN")
}

func listTags(t *testing.T, r *testRegistry, path string) ([]string, string) {
	t.Helper()
	resp := r.do("GET", path, nil)
	r.expect(resp, 200, "")
	var body struct{ Tags []string }
	if err := json.Unmarshal(resp.body, &body); err != nil {
		t.Fatal(err)
	}
	return body.Tags, resp.header.Get("Link")
}

func TestTagsListPagination(t *testing.T) {
	r := newTestRegistry(t, nil)
	r.expect(r.do("GET", "/v2/app/tags/list", nil), 404, "NAME_UNKNOWN")
	want := []string{"a", "b", "c", "d", "e"}
	for _, tag := range slices.Backward(want) {
		r.pushImage("app", tag, []byte("{}"))
	}
	all, link := listTags(t, r, "/v2/app/tags/list")
	if !slices.Equal(all, want) || link != "" {
		t.Fatalf("full list %v, Link %q", all, link)
	}
	var got []string
	path := "/v2/app/tags/list?n=2"
	for path != "" {
		page, link := listTags(t, r, path)
		got = append(got, page...)
		path = ""
		if link != "" {
			path = link[1 : len(link)-len(`>; rel="next"`)]
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paginated %v, want %v", got, want)
	}
	if page, link := listTags(t, r, "/v2/app/tags/list?n=0"); len(page) != 0 || link != "" {
		t.Fatalf("n=0: %v, Link %q", page, link)
	}
}

func TestReferrers(t *testing.T) {
	r := newTestRegistry(t, nil)
	subject := r.pushImage("app", "v1", []byte("{}"))
	r.pushBlob("app", []byte("sig"))
	push := func(artifactType string) digest.Digest {
		m := ocispec.Manifest{
			MediaType: ocispec.MediaTypeImageManifest, ArtifactType: artifactType,
			Config:  ocispec.DescriptorEmptyJSON,
			Layers:  []ocispec.Descriptor{{MediaType: "application/octet-stream", Digest: digest.FromString("sig"), Size: 3}},
			Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: 1},
		}
		m.SchemaVersion = 2
		b, _ := json.Marshal(m)
		d := digest.FromBytes(b)
		put := r.do("PUT", "/v2/app/manifests/"+d.String(), b, "Content-Type", ocispec.MediaTypeImageManifest)
		r.expect(put, 201, "")
		if put.header.Get("OCI-Subject") != subject.String() {
			t.Fatalf("OCI-Subject = %q", put.header.Get("OCI-Subject"))
		}
		return d
	}
	r.pushBlob("app", ocispec.DescriptorEmptyJSON.Data)
	sig, sbom := push("application/vnd.example.sig"), push("application/vnd.example.sbom")
	list := func(query string) ([]digest.Digest, http.Header) {
		resp := r.do("GET", "/v2/app/referrers/"+subject.String()+query, nil)
		r.expect(resp, 200, "")
		var idx ocispec.Index
		if err := json.Unmarshal(resp.body, &idx); err != nil {
			t.Fatal(err)
		}
		var ds []digest.Digest
		for _, m := range idx.Manifests {
			ds = append(ds, m.Digest)
		}
		return ds, resp.header
	}
	all, _ := list("")
	if want := []digest.Digest{sig, sbom}; !sameSet(all, want) {
		t.Fatalf("referrers %v, want %v", all, want)
	}
	filtered, h := list("?artifactType=application/vnd.example.sbom")
	if !slices.Equal(filtered, []digest.Digest{sbom}) || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered %v, OCI-Filters-Applied %q", filtered, h.Get("OCI-Filters-Applied"))
	}
	page, h := list("?n=1")
	if len(page) != 1 || h.Get("Link") == "" {
		t.Fatalf("n=1 page %v, Link %q", page, h.Get("Link"))
	}
	// Deleting a referrer removes it from the list.
	r.expect(r.do("DELETE", "/v2/app/manifests/"+sig.String(), nil), 202, "")
	if after, _ := list(""); !slices.Equal(after, []digest.Digest{sbom}) {
		t.Fatalf("after delete %v", after)
	}
}

func sameSet(a, b []digest.Digest) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestCatalog(t *testing.T) {
	r := newTestRegistry(t, nil)
	for _, repo := range []string{"c", "a/b", "a", "a/b/c"} {
		r.pushImage(repo, "v1", []byte("{}"))
	}
	resp := r.do("GET", "/v2/_catalog", nil)
	var body struct{ Repositories []string }
	_ = json.Unmarshal(resp.body, &body)
	if want := []string{"a", "a/b", "a/b/c", "c"}; !slices.Equal(body.Repositories, want) {
		t.Fatalf("catalog %v, want %v", body.Repositories, want)
	}
	resp = r.do("GET", "/v2/_catalog?n=2&last=a", nil)
	_ = json.Unmarshal(resp.body, &body)
	if !slices.Equal(body.Repositories, []string{"a/b", "a/b/c"}) || resp.header.Get("Link") == "" {
		t.Fatalf("page %v, Link %q", body.Repositories, resp.header.Get("Link"))
	}
}

func TestBaseAndUnknownPath(t *testing.T) {
	r := newTestRegistry(t, nil)
	base := r.do("GET", "/v2/", nil)
	if base.status != 200 || base.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v", base.status, base.header)
	}
	r.expect(r.do("GET", "/v2/app/nothing/here", nil), 404, "NOT_FOUND")
	r.expect(r.do("GET", "/other", nil), 404, "NOT_FOUND")
}
