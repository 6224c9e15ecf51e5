package server

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestSpecEdges covers answers the distribution-spec pins down and
// registryd once got wrong: each row is one request against a registry
// holding org/app (an image and two referrers of it).
func TestSpecEdges(t *testing.T) {
	r := newTestRegistry(t, nil)
	subject := r.pushImage("org/app", "v1", []byte("{}"))
	r.pushBlob("org/app", ocispec.DescriptorEmptyJSON.Data)
	for _, at := range []string{"application/vnd.example.sig", "application/vnd.example.sbom"} {
		m := ocispec.Manifest{
			MediaType: ocispec.MediaTypeImageManifest, ArtifactType: at, Config: ocispec.DescriptorEmptyJSON,
			Layers:  []ocispec.Descriptor{ocispec.DescriptorEmptyJSON},
			Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: 1},
		}
		m.SchemaVersion = 2
		b, _ := json.Marshal(m)
		r.expect(r.do("PUT", "/v2/org/app/manifests/"+digest.FromBytes(b).String(), b, "Content-Type", ocispec.MediaTypeImageManifest), 201, "")
	}
	tests := []struct {
		name   string
		method string
		path   string
		status int
		code   string
		check  func(t *testing.T, resp response)
	}{
		{"catalog n=0 is an empty page", "GET", "/v2/_catalog?n=0", 200, "", func(t *testing.T, resp response) {
			var body struct{ Repositories []string }
			if err := json.Unmarshal(resp.body, &body); err != nil || body.Repositories == nil || len(body.Repositories) != 0 || resp.header.Get("Link") != "" {
				t.Fatalf("body %s, Link %q", resp.body, resp.header.Get("Link"))
			}
		}},
		{"referrers n=0 is an empty page", "GET", "/v2/org/app/referrers/" + subject.String() + "?n=0", 200, "", func(t *testing.T, resp response) {
			var idx ocispec.Index
			if err := json.Unmarshal(resp.body, &idx); err != nil || len(idx.Manifests) != 0 || resp.header.Get("Link") != "" {
				t.Fatalf("body %s, Link %q", resp.body, resp.header.Get("Link"))
			}
		}},
		{"referrers with a forged page token", "GET", "/v2/org/app/referrers/" + subject.String() + "?n=1&page=cmVwb3Mv.AAAA", 400, "PAGINATION_NUMBER_INVALID", nil},
		{"tags of a parent of a repository", "GET", "/v2/org/tags/list", 404, "NAME_UNKNOWN", nil},
		{"tags of a prefix of a repository's name", "GET", "/v2/org/ap/tags/list", 404, "NAME_UNKNOWN", nil},
		{"tags of the repository", "GET", "/v2/org/app/tags/list", 200, "", func(t *testing.T, resp response) {
			var body struct{ Tags []string }
			if err := json.Unmarshal(resp.body, &body); err != nil || !slices.Equal(body.Tags, []string{"v1"}) {
				t.Fatalf("body %s", resp.body)
			}
		}},
		{"deleting a manifest through the blobs endpoint", "DELETE", "/v2/org/app/blobs/" + subject.String(), 405, "UNSUPPORTED", func(t *testing.T, resp response) {
			if !strings.Contains(string(resp.body), "/manifests/") {
				t.Errorf("the error does not say where to delete a manifest: %s", resp.body)
			}
			if got := resp.header.Get("Allow"); got != "GET, HEAD" {
				t.Errorf("Allow %q", got)
			}
			r.expect(r.do("HEAD", "/v2/org/app/blobs/"+subject.String(), nil), 200, "")
			r.expect(r.do("GET", "/v2/org/app/manifests/v1", nil), 200, "")
		}},
		{"deleting a missing blob", "DELETE", "/v2/org/app/blobs/" + digest.FromString("nothing").String(), 404, "BLOB_UNKNOWN", nil},
	}
	// Every 405 lists the route table's methods for its endpoint.
	for _, m := range []struct{ method, path, allow string }{
		{"POST", "/v2/", "GET, HEAD"},
		{"DELETE", "/v2/_catalog", "GET"},
		{"POST", "/v2/org/app/manifests/v1", "DELETE, GET, HEAD, PUT"},
		{"PUT", "/v2/org/app/blobs/" + subject.String(), "DELETE, GET, HEAD"},
		{"GET", "/v2/org/app/blobs/uploads/", "POST"},
		{"POST", "/v2/org/app/blobs/uploads/some-id", "DELETE, GET, PATCH, PUT"},
		{"DELETE", "/v2/org/app/tags/list", "GET, HEAD"},
		{"PUT", "/v2/org/app/referrers/" + subject.String(), "GET, HEAD"},
	} {
		tests = append(tests, struct {
			name   string
			method string
			path   string
			status int
			code   string
			check  func(t *testing.T, resp response)
		}{"405 " + m.method + " " + m.path, m.method, m.path, 405, "UNSUPPORTED", func(t *testing.T, resp response) {
			if got := resp.header.Get("Allow"); got != m.allow {
				t.Fatalf("Allow %q, want %q", got, m.allow)
			}
		}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := r.do(tt.method, tt.path, nil)
			if resp.status != tt.status || resp.errorCode() != tt.code {
				t.Fatalf("got %d %q (%s), want %d %q", resp.status, resp.errorCode(), resp.body, tt.status, tt.code)
			}
			if tt.check != nil {
				tt.check(t, resp)
			}
		})
	}
}

// TestReferrersPaging follows the Link headers of referrers pages and
// checks every referrer comes exactly once, with and without a filter.
func TestReferrersPaging(t *testing.T) {
	r := newTestRegistry(t, nil)
	subject := r.pushImage("app", "v1", []byte("{}"))
	r.pushBlob("app", ocispec.DescriptorEmptyJSON.Data)
	want := map[string][]digest.Digest{}
	for i := range 7 {
		at := []string{"application/vnd.example.sig", "application/vnd.example.sbom"}[i%2]
		m := ocispec.Manifest{
			MediaType: ocispec.MediaTypeImageManifest, ArtifactType: at, Config: ocispec.DescriptorEmptyJSON,
			Layers:      []ocispec.Descriptor{ocispec.DescriptorEmptyJSON},
			Subject:     &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: 1},
			Annotations: map[string]string{"i": string(rune('a' + i))},
		}
		m.SchemaVersion = 2
		b, _ := json.Marshal(m)
		d := digest.FromBytes(b)
		r.expect(r.do("PUT", "/v2/app/manifests/"+d.String(), b, "Content-Type", ocispec.MediaTypeImageManifest), 201, "")
		want[""] = append(want[""], d)
		want[at] = append(want[at], d)
	}
	for filter, ds := range want {
		for _, n := range []int{1, 2, 3, 7, 8} {
			path := "/v2/app/referrers/" + subject.String() + "?n=" + string(rune('0'+n))
			if filter != "" {
				path += "&artifactType=" + filter
			}
			var got []digest.Digest
			for pages := 0; path != ""; pages++ {
				if pages > len(ds)+1 {
					t.Fatalf("filter %q n=%d: more pages than referrers", filter, n)
				}
				resp := r.do("GET", path, nil)
				r.expect(resp, 200, "")
				var idx ocispec.Index
				if err := json.Unmarshal(resp.body, &idx); err != nil {
					t.Fatal(err)
				}
				if len(idx.Manifests) > n {
					t.Fatalf("filter %q n=%d: page of %d", filter, n, len(idx.Manifests))
				}
				for _, m := range idx.Manifests {
					if filter != "" && m.ArtifactType != filter {
						t.Fatalf("filter %q let %s through", filter, m.ArtifactType)
					}
					got = append(got, m.Digest)
				}
				path = nextLink(resp.header.Get("Link"))
			}
			if !sameSet(got, ds) || len(got) != len(ds) {
				t.Fatalf("filter %q n=%d: got %v, want %v", filter, n, got, ds)
			}
		}
	}
}

// nextLink extracts the target of a Link: <...>; rel="next" header.
func nextLink(h string) string {
	if h == "" {
		return ""
	}
	u, _, _ := strings.Cut(strings.TrimPrefix(h, "<"), ">")
	return u
}
