package server

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// pushFlow pushes content to repo one way and returns the committed digest.
type pushFlow func(r *testRegistry, repo string, content []byte) digest.Digest

func monolithicPost(r *testRegistry, repo string, content []byte) digest.Digest {
	return r.pushBlob(repo, content)
}

func postThenPut(r *testRegistry, repo string, content []byte) digest.Digest {
	d := digest.FromBytes(content)
	r.expect(r.do("PUT", withQuery(r.startUpload(repo), "digest", d.String()), content), 201, "")
	return d
}

// chunked sends three PATCHes with Content-Range, then an empty PUT.
func chunked(r *testRegistry, repo string, content []byte) digest.Digest {
	return chunkedAlg(r, repo, content, digest.SHA256, "")
}

func chunkedAlg(r *testRegistry, repo string, content []byte, alg digest.Algorithm, query string) digest.Digest {
	r.t.Helper()
	resp := r.do("POST", "/v2/"+repo+"/blobs/uploads/"+query, nil)
	r.expect(resp, 202, "")
	loc := resp.header.Get("Location")
	size := len(content)/3 + 1
	for start := 0; start < len(content); start += size {
		end := min(start+size, len(content))
		resp := r.do("PATCH", loc, content[start:end], "Content-Range", fmt.Sprintf("%d-%d", start, end-1))
		r.expect(resp, 202, "")
		if want := fmt.Sprintf("0-%d", end-1); resp.header.Get("Range") != want {
			r.t.Fatalf("Range after chunk = %q, want %q", resp.header.Get("Range"), want)
		}
		loc = resp.header.Get("Location")
	}
	d := alg.FromBytes(content)
	r.expect(r.do("PUT", withQuery(loc, "digest", d.String()), nil), 201, "")
	return d
}

// streamed sends one PATCH without Content-Range (Docker's way).
func streamed(r *testRegistry, repo string, content []byte) digest.Digest {
	resp := r.do("PATCH", r.startUpload(repo), content)
	r.expect(resp, 202, "")
	d := digest.FromBytes(content)
	r.expect(r.do("PUT", withQuery(resp.header.Get("Location"), "digest", d.String()), nil), 201, "")
	return d
}

// patchThenPutLast sends the last chunk in the body of the PUT.
func patchThenPutLast(r *testRegistry, repo string, content []byte) digest.Digest {
	half := len(content) / 2
	resp := r.do("PATCH", r.startUpload(repo), content[:half], "Content-Range", fmt.Sprintf("0-%d", half-1))
	d := digest.FromBytes(content)
	r.expect(r.do("PUT", withQuery(resp.header.Get("Location"), "digest", d.String()), content[half:],
		"Content-Range", fmt.Sprintf("%d-%d", half, len(content)-1)), 201, "")
	return d
}

func TestBlobPushFlows(t *testing.T) {
	content := bytes.Repeat([]byte("stevedore "), 1000)
	flows := []struct {
		name string
		push pushFlow
	}{
		{"monolithic POST", monolithicPost},
		{"POST then PUT", postThenPut},
		{"chunked", chunked},
		{"streamed", streamed},
		{"last chunk in PUT", patchThenPutLast},
		{"sha512 with digest-algorithm", func(r *testRegistry, repo string, c []byte) digest.Digest {
			return chunkedAlg(r, repo, c, digest.SHA512, "?digest-algorithm=sha512")
		}},
		{"sha512 without digest-algorithm", func(r *testRegistry, repo string, c []byte) digest.Digest {
			return chunkedAlg(r, repo, c, digest.SHA512, "")
		}},
		{"sha512 monolithic", func(r *testRegistry, repo string, c []byte) digest.Digest {
			d := digest.NewDigestFromBytes(digest.SHA512, sha512Sum(c))
			r.expect(r.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), c), 201, "")
			return d
		}},
	}
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			r := newTestRegistry(t, nil)
			d := f.push(r, "team/app", content)
			get := r.do("GET", "/v2/team/app/blobs/"+d.String(), nil)
			r.expect(get, 200, "")
			if !bytes.Equal(get.body, content) {
				t.Fatalf("pulled %d bytes differing from the %d pushed", len(get.body), len(content))
			}
			if get.header.Get("Docker-Content-Digest") != d.String() {
				t.Fatalf("Docker-Content-Digest = %q", get.header.Get("Docker-Content-Digest"))
			}
			head := r.do("HEAD", "/v2/team/app/blobs/"+d.String(), nil)
			if head.status != 200 || head.header.Get("Content-Length") != fmt.Sprint(len(content)) || len(head.body) != 0 {
				t.Fatalf("HEAD = %d, Content-Length %q", head.status, head.header.Get("Content-Length"))
			}
			if left := keys(t, r.bucket, "uploads/"); len(left) != 0 {
				t.Fatalf("upload objects left after commit: %v", left)
			}
		})
	}
}

func sha512Sum(b []byte) []byte {
	s := sha512.Sum512(b)
	return s[:]
}

func TestEmptyBlob(t *testing.T) {
	r := newTestRegistry(t, nil)
	d := postThenPut(r, "app", []byte{})
	get := r.do("GET", "/v2/app/blobs/"+d.String(), nil)
	r.expect(get, 200, "")
	if len(get.body) != 0 || d != digest.FromBytes(nil) {
		t.Fatalf("empty blob came back as %q (%s)", get.body, d)
	}
}

func TestUploadStatusCancelAndStaleToken(t *testing.T) {
	r := newTestRegistry(t, &Options{ChunkMinLength: 1024})
	post := r.do("POST", "/v2/app/blobs/uploads/", nil)
	if post.header.Get("OCI-Chunk-Min-Length") != "1024" {
		t.Fatalf("OCI-Chunk-Min-Length = %q", post.header.Get("OCI-Chunk-Min-Length"))
	}
	loc0 := post.header.Get("Location")
	patch := r.do("PATCH", loc0, []byte("0123456789"), "Content-Range", "0-9")
	loc1 := patch.header.Get("Location")
	status := r.do("GET", loc1, nil)
	r.expect(status, 204, "")
	if status.header.Get("Range") != "0-9" || status.header.Get("Docker-Upload-UUID") == "" {
		t.Fatalf("status headers: %v", status.header)
	}
	// Reusing the first Location would fork the upload: refused with 416,
	// and the answer carries a Location to resume from.
	stale := r.do("PATCH", loc0, []byte("abcdefghij"), "Content-Range", "0-9")
	r.expect(stale, 416, "RANGE_INVALID")
	// The 416 and a status request with the stale Location both point at
	// where the upload really is, as if the lost answer had arrived.
	if st := r.do("GET", stale.header.Get("Location"), nil); st.header.Get("Range") != "0-9" {
		t.Fatalf("Range from the 416's Location = %q", st.header.Get("Range"))
	}
	if st := r.do("GET", loc0, nil); st.header.Get("Range") != "0-9" {
		t.Fatalf("Range for a stale Location = %q", st.header.Get("Range"))
	}
	// Committing with the stale Location would store only a prefix.
	r.expect(r.do("PUT", withQuery(loc0, "digest", digest.FromString("").String()), nil), 416, "RANGE_INVALID")
	resumed := r.do("PATCH", stale.header.Get("Location"), []byte("abcdefghij"), "Content-Range", "10-19")
	r.expect(resumed, 202, "")
	loc1 = resumed.header.Get("Location")
	r.expect(r.do("DELETE", loc1, nil), 204, "")
	r.expect(r.do("GET", loc1, nil), 404, "BLOB_UPLOAD_UNKNOWN")
	if left := keys(t, r.bucket, "uploads/"); len(left) != 0 {
		t.Fatalf("objects left after cancel: %v", left)
	}
}

func TestOutOfOrderThenResume(t *testing.T) {
	r := newTestRegistry(t, nil)
	content := []byte(strings.Repeat("abc", 100))
	loc := r.startUpload("app")
	first := r.do("PATCH", loc, content[:100], "Content-Range", "0-99")
	loc = first.header.Get("Location")
	bad := r.do("PATCH", loc, content[200:], "Content-Range", "200-299")
	r.expect(bad, 416, "RANGE_INVALID")
	status := r.do("GET", bad.header.Get("Location"), nil)
	if status.header.Get("Range") != "0-99" {
		t.Fatalf("Range after 416 = %q", status.header.Get("Range"))
	}
	rest := r.do("PATCH", status.header.Get("Location"), content[100:], "Content-Range", "100-299")
	d := digest.FromBytes(content)
	r.expect(r.do("PUT", withQuery(rest.header.Get("Location"), "digest", d.String()), nil), 201, "")
}

func TestBlobRange(t *testing.T) {
	r := newTestRegistry(t, nil)
	d := r.pushBlob("app", []byte("0123456789"))
	tests := []struct {
		rng, want, contentRange string
		status                  int
	}{
		{"bytes=2-5", "2345", "bytes 2-5/10", 206},
		{"bytes=7-", "789", "bytes 7-9/10", 206},
		{"bytes=-3", "789", "bytes 7-9/10", 206},
		{"bytes=8-100", "89", "bytes 8-9/10", 206},
		{"bytes=10-", "", "bytes */10", 416},
		{"bytes=5-2", "", "bytes */10", 416},
		{"lines=1-2", "", "bytes */10", 416},
	}
	for _, tt := range tests {
		t.Run(tt.rng, func(t *testing.T) {
			resp := r.do("GET", "/v2/app/blobs/"+d.String(), nil, "Range", tt.rng)
			if resp.status != tt.status || resp.header.Get("Content-Range") != tt.contentRange {
				t.Fatalf("got %d %q, want %d %q", resp.status, resp.header.Get("Content-Range"), tt.status, tt.contentRange)
			}
			if tt.status == 206 && string(resp.body) != tt.want {
				t.Fatalf("body %q, want %q", resp.body, tt.want)
			}
		})
	}
}

func TestMountAndDelete(t *testing.T) {
	r := newTestRegistry(t, nil)
	d := r.pushBlob("src", []byte("shared layer"))
	mount := r.do("POST", "/v2/dst/blobs/uploads/?mount="+d.String()+"&from=src", nil)
	r.expect(mount, http.StatusCreated, "")
	if mount.header.Get("Location") != "/v2/dst/blobs/"+d.String() {
		t.Fatalf("mount Location = %q", mount.header.Get("Location"))
	}
	r.expect(r.do("GET", "/v2/dst/blobs/"+d.String(), nil), 200, "")
	// Not in the source: fall back to an upload session.
	missing := digest.FromString("not there")
	r.expect(r.do("POST", "/v2/dst/blobs/uploads/?mount="+missing.String()+"&from=src", nil), 202, "")
	// No source: declined, so repositories do not learn each other's blobs.
	r.expect(r.do("POST", "/v2/other/blobs/uploads/?mount="+d.String(), nil), 202, "")
	r.expect(r.do("GET", "/v2/other/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
	// Deleting from dst leaves src intact.
	r.expect(r.do("DELETE", "/v2/dst/blobs/"+d.String(), nil), 202, "")
	r.expect(r.do("GET", "/v2/dst/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
	r.expect(r.do("GET", "/v2/src/blobs/"+d.String(), nil), 200, "")
	r.expect(r.do("DELETE", "/v2/dst/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
}

// TestConcurrentPushesOfOneBlob: pushers racing on the same digest all
// succeed (IfNotExist losers are not errors) and the content is intact.
func TestConcurrentPushesOfOneBlob(t *testing.T) {
	r := newTestRegistry(t, nil)
	content := bytes.Repeat([]byte("race "), 20000)
	d := digest.FromBytes(content)
	errs := make(chan error, 8)
	for i := range 8 {
		go func() {
			repo := fmt.Sprintf("racer%d", i%2)
			req, _ := http.NewRequest("POST", r.url+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), bytes.NewReader(content))
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 201 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, repo := range []string{"racer0", "racer1"} {
		if get := r.do("GET", "/v2/"+repo+"/blobs/"+d.String(), nil); !bytes.Equal(get.body, content) {
			t.Fatalf("%s: content differs after racing pushes", repo)
		}
	}
}
