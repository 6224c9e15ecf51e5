package storage

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestLayout pins the bucket layout of DESIGN.md: garbage collection and
// the journal import read these keys from outside registryd.
func TestLayout(t *testing.T) {
	d := digest.Digest("sha256:" + strings.Repeat("a", 64))
	s := digest.Digest("sha512:" + strings.Repeat("b", 128))
	tests := map[string]string{
		BlobKey(d):                           "blobs/sha256/" + d.Encoded(),
		BlobKey(s):                           "blobs/sha512/" + s.Encoded(),
		layerLinkKey("team/app", d):          "repos/team/app/_layers/sha256/" + d.Encoded(),
		manifestLinkKey("team/app", s):       "repos/team/app/_manifests/sha512/" + s.Encoded(),
		referrerKey("team/app", s, d):        "repos/team/app/_referrers/sha512/" + s.Encoded() + "/sha256/" + d.Encoded(),
		TagKey("team/app", "v1"):             "repos/team/app/_tags/v1",
		UploadMarkerKey("0123"):              "uploads/0123/startedat",
		UploadStateKey("0123"):               "uploads/0123/state",
		UploadPartKey("0123", 0, "", "ab"):   "uploads/0123/part-00000000.0.ab",
		UploadPartKey("0123", 7, "ab", "cd"): "uploads/0123/part-00000007.ab.cd",
		RepoPrefix("team/app"):               "repos/team/app/",
		referrersPrefix("team/app", d):       "repos/team/app/_referrers/sha256/" + d.Encoded() + "/",
	}
	for got, want := range tests {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	// Part keys sort in part order as strings, which listing relies on.
	if !(UploadPartKey("x", 9, "a", "b") < UploadPartKey("x", 10, "a", "b")) {
		t.Error("part keys do not sort numerically")
	}
	for _, k := range []string{UploadPartKey("x", 0, "", "t0"), UploadPartKey("x", 12, "t11", "t12")} {
		n, prev, tag, ok := ParseUploadPartKey("x", k)
		if !ok || UploadPartKey("x", n, prev, tag) != k {
			t.Errorf("ParseUploadPartKey(%q) = %d %q %q %v, not the key back", k, n, prev, tag, ok)
		}
	}
	for _, k := range []string{"uploads/x/state", "uploads/x/part-00000001", "uploads/x/part-1.a.b", "uploads/y/part-00000001.a.b", "uploads/x/part-00000001.a."} {
		if _, _, _, ok := ParseUploadPartKey("x", k); ok {
			t.Errorf("ParseUploadPartKey accepted %q", k)
		}
	}
}
