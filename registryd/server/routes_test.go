package server

import (
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		path string
		ep   endpoint
		name string
		arg  string
	}{
		{"/v2/", epBase, "", ""},
		{"/v2", epBase, "", ""},
		{"/v2/_catalog", epCatalog, "", ""},
		{"/v2/a/manifests/latest", epManifest, "a", "latest"},
		{"/v2/a/b/c/manifests/sha256:x", epManifest, "a/b/c", "sha256:x"},
		{"/v2/manifests/manifests/v1", epManifest, "manifests", "v1"},
		{"/v2/a/blobs/sha256:x", epBlob, "a", "sha256:x"},
		{"/v2/a/blobs/uploads/", epUploadStart, "a", ""},
		{"/v2/a/blobs/uploads", epUploadStart, "a", ""},
		{"/v2/a/blobs/uploads/abc", epUpload, "a", "abc"},
		{"/v2/blobs/uploads/blobs/uploads/abc", epUpload, "blobs/uploads", "abc"},
		{"/v2/a/b/tags/list", epTags, "a/b", ""},
		{"/v2/tags/list", epNone, "", ""},
		{"/v2/a/referrers/sha256:x", epReferrers, "a", "sha256:x"},
		{"/v2/a/unknown/x", epNone, "", ""},
		{"/v3/a/manifests/x", epNone, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			ep, p := parsePath(tt.path)
			if ep != tt.ep || p.name != tt.name || p.arg != tt.arg {
				t.Fatalf("parsePath(%q) = %v %+v, want %v %q %q", tt.path, ep, p, tt.ep, tt.name, tt.arg)
			}
		})
	}
}

// FuzzParsePath: the parse is consistent with the path (name and argument
// come from it, the argument never holds a '/').
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/v2/a/b/manifests/latest", "/v2/a/blobs/uploads/", "/v2/x/referrers/sha256:1", "/v2//tags/list"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		ep, p := parsePath(path)
		if ep == epNone || ep == epBase || ep == epCatalog {
			return
		}
		if strings.Contains(p.arg, "/") {
			t.Fatalf("argument %q holds a '/'", p.arg)
		}
		if !strings.HasPrefix(path, "/v2/"+p.name+"/") {
			t.Fatalf("name %q is not the path's prefix in %q", p.name, path)
		}
	})
}
