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
		BlobKey(d):                     "blobs/sha256/" + d.Encoded(),
		BlobKey(s):                     "blobs/sha512/" + s.Encoded(),
		layerLinkKey("team/app", d):    "repos/team/app/_layers/sha256/" + d.Encoded(),
		manifestLinkKey("team/app", s): "repos/team/app/_manifests/sha512/" + s.Encoded(),
		referrerKey("team/app", s, d):  "repos/team/app/_referrers/sha512/" + s.Encoded() + "/sha256/" + d.Encoded(),
		TagKey("team/app", "v1"):       "repos/team/app/_tags/v1",
		UploadMarkerKey("0123"):        "uploads/0123/startedat",
		UploadStateKey("0123"):         "uploads/0123/state",
		UploadPartKey("0123", 7):       "uploads/0123/part-00000007",
		RepoPrefix("team/app"):         "repos/team/app/",
		referrersPrefix("team/app", d): "repos/team/app/_referrers/sha256/" + d.Encoded() + "/",
	}
	for got, want := range tests {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	// Part keys sort in part order as strings, which listing relies on.
	if !(UploadPartKey("x", 9) < UploadPartKey("x", 10)) {
		t.Error("part keys do not sort numerically")
	}
}
