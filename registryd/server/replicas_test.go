package server

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob/fileblob"
)

// TestUploadAcrossReplicas spreads the PATCHes of one upload over three
// servers, each with its own handle on one file bucket (as separate pods
// would have), commits on one of them and pulls from a fourth.
func TestUploadAcrossReplicas(t *testing.T) {
	dir := t.TempDir()
	secret := []byte("shared secret")
	var replicas []*testRegistry
	for range 4 {
		b, err := fileblob.OpenBucket(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		replicas = append(replicas, serveBucket(t, b, &Options{Secret: secret}))
	}
	content := make([]byte, 3<<20+12345)
	_, _ = rand.Read(content)
	d := digest.FromBytes(content)

	loc := replicas[0].startUpload("team/app")
	chunk := len(content)/6 + 1
	for i, start := 0, 0; start < len(content); i, start = i+1, start+chunk {
		r := replicas[i%3]
		end := min(start+chunk, len(content))
		resp := r.do("PATCH", r.url+pathOf(loc), content[start:end], "Content-Range", fmt.Sprintf("%d-%d", start, end-1))
		r.expect(resp, 202, "")
		loc = resp.header.Get("Location")
		// Each replica answers status for the upload the others advanced.
		other := replicas[(i+1)%3]
		if st := other.do("GET", other.url+pathOf(loc), nil); st.header.Get("Range") != fmt.Sprintf("0-%d", end-1) {
			t.Fatalf("replica %d sees Range %q after chunk %d", (i+1)%3, st.header.Get("Range"), i)
		}
	}
	r := replicas[2]
	r.expect(r.do("PUT", r.url+pathOf(withQuery(loc, "digest", d.String())), nil), 201, "")

	puller := replicas[3]
	get := puller.do("GET", "/v2/team/app/blobs/"+d.String(), nil)
	puller.expect(get, 200, "")
	if !bytes.Equal(get.body, content) {
		t.Fatalf("pulled %d bytes, not byte-identical to the %d pushed", len(get.body), len(content))
	}
}

func pathOf(loc string) string {
	if i := strings.Index(loc, "/v2/"); i >= 0 {
		return loc[i:]
	}
	return loc
}
