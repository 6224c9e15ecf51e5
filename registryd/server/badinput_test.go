package server

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// rawRequest writes head and body on a plain connection, half-closes it and
// returns the response status and error code: the only way to send a body
// shorter than its Content-Length.
func rawRequest(t *testing.T, r *testRegistry, head string, body []byte) response {
	t.Helper()
	u, _ := url.Parse(r.url)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s\r\nHost: %s\r\nConnection: close\r\n\r\n", head, u.Host); err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write(body)
	_ = conn.(*net.TCPConn).CloseWrite()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return response{status: resp.StatusCode, header: resp.Header, body: []byte(b.String())}
}

// startUpload returns the Location of a new upload session in repo.
func (r *testRegistry) startUpload(repo string) string {
	r.t.Helper()
	resp := r.do("POST", "/v2/"+repo+"/blobs/uploads/", nil)
	r.expect(resp, http.StatusAccepted, "")
	return resp.header.Get("Location")
}

// withQuery adds k=v to a Location.
func withQuery(loc, k, v string) string {
	u, _ := url.Parse(loc)
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestBadInput sends one bad request per row and checks the spec error
// code and that nothing new appeared under blobs/.
func TestBadInput(t *testing.T) {
	content := []byte("some layer content that is long enough to split")
	other := digest.FromString("something else")
	tests := []struct {
		name   string
		send   func(t *testing.T, r *testRegistry) response
		status int
		code   string
	}{
		{"wrong digest monolithic", func(t *testing.T, r *testRegistry) response {
			return r.do("POST", "/v2/app/blobs/uploads/?digest="+other.String(), content)
		}, 400, "DIGEST_INVALID"},
		{"wrong digest chunked", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			resp := r.do("PATCH", loc, content, "Content-Range", fmt.Sprintf("0-%d", len(content)-1))
			r.expect(resp, 202, "")
			return r.do("PUT", withQuery(resp.header.Get("Location"), "digest", other.String()), nil)
		}, 400, "DIGEST_INVALID"},
		{"truncated monolithic body", func(t *testing.T, r *testRegistry) response {
			d := digest.FromBytes(content)
			head := fmt.Sprintf("POST /v2/app/blobs/uploads/?digest=%s HTTP/1.1\r\nContent-Length: %d", d, len(content))
			return rawRequest(t, r, head, content[:10])
		}, 400, "SIZE_INVALID"},
		{"truncated chunk", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			u, _ := url.Parse(loc)
			head := fmt.Sprintf("PATCH %s HTTP/1.1\r\nContent-Length: %d\r\nContent-Range: 0-%d", u.RequestURI(), len(content), len(content)-1)
			return rawRequest(t, r, head, content[:10])
		}, 400, "SIZE_INVALID"},
		{"out-of-order chunk", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			return r.do("PATCH", loc, content[10:20], "Content-Range", "10-19")
		}, 416, "RANGE_INVALID"},
		{"out-of-order final chunk", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			resp := r.do("PATCH", loc, content[:10], "Content-Range", "0-9")
			return r.do("PUT", withQuery(resp.header.Get("Location"), "digest", digest.FromBytes(content).String()),
				content[5:], "Content-Range", fmt.Sprintf("5-%d", len(content)-1))
		}, 416, "RANGE_INVALID"},
		{"malformed JSON manifest", func(t *testing.T, r *testRegistry) response {
			return r.do("PUT", "/v2/app/manifests/v1", []byte(`{"schemaVersion": 2, "config": `), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "MANIFEST_INVALID"},
		{"manifest media type mismatch", func(t *testing.T, r *testRegistry) response {
			cfg := []byte("{}")
			return r.do("PUT", "/v2/app/manifests/v1", imageManifest(cfg), "Content-Type", ocispec.MediaTypeImageIndex)
		}, 400, "MANIFEST_INVALID"},
		{"manifest naming a missing blob", func(t *testing.T, r *testRegistry) response {
			cfg := []byte("{}")
			return r.do("PUT", "/v2/app/manifests/v1", imageManifest(cfg, []byte("never pushed")), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"manifest naming a blob of another repository", func(t *testing.T, r *testRegistry) response {
			cfg := []byte(`{"other":1}`)
			return r.do("PUT", "/v2/app/manifests/v1", imageManifest(cfg), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"descriptor size mismatch", func(t *testing.T, r *testRegistry) response {
			m := strings.Replace(string(imageManifest([]byte("{}"))), `"size":2`, `"size":3`, 1)
			return r.do("PUT", "/v2/app/manifests/v1", []byte(m), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "MANIFEST_INVALID"},
		{"manifest digest mismatch", func(t *testing.T, r *testRegistry) response {
			cfg := []byte("{}")
			return r.do("PUT", "/v2/app/manifests/"+other.String(), imageManifest(cfg), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "DIGEST_INVALID"},
		{"oversized manifest", func(t *testing.T, r *testRegistry) response {
			big := []byte(`{"schemaVersion":2,"annotations":{"x":"` + strings.Repeat("a", 5000) + `"}}`)
			return r.do("PUT", "/v2/app/manifests/v1", big, "Content-Type", ocispec.MediaTypeImageManifest)
		}, 413, "MANIFEST_INVALID"},
		{"name with ..", func(t *testing.T, r *testRegistry) response {
			return r.do("POST", "/v2/../x/blobs/uploads/?digest="+digest.FromBytes(content).String(), content)
		}, 400, "NAME_INVALID"},
		{"name with upper case", func(t *testing.T, r *testRegistry) response {
			return r.do("POST", "/v2/Team/App/blobs/uploads/?digest="+digest.FromBytes(content).String(), content)
		}, 400, "NAME_INVALID"},
		{"name of 300 characters", func(t *testing.T, r *testRegistry) response {
			return r.do("GET", "/v2/"+strings.Repeat("a", 300)+"/tags/list", nil)
		}, 400, "NAME_INVALID"},
		{"name reaching into the layout", func(t *testing.T, r *testRegistry) response {
			return r.do("GET", "/v2/app/_tags/tags/list", nil)
		}, 400, "NAME_INVALID"},
		{"invalid tag on put", func(t *testing.T, r *testRegistry) response {
			return r.do("PUT", "/v2/app/manifests/-bad", []byte("{}"), "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "TAG_INVALID"},
		{"invalid tag parameter", func(t *testing.T, r *testRegistry) response {
			cfg := []byte("{}")
			m := imageManifest(cfg)
			return r.do("PUT", "/v2/app/manifests/"+digest.FromBytes(m).String()+"?tag=ok&tag=.bad", m, "Content-Type", ocispec.MediaTypeImageManifest)
		}, 400, "TAG_INVALID"},
		{"invalid digest in blob URL", func(t *testing.T, r *testRegistry) response {
			return r.do("GET", "/v2/app/blobs/sha256:nothex", nil)
		}, 400, "DIGEST_INVALID"},
		{"unsupported digest algorithm", func(t *testing.T, r *testRegistry) response {
			return r.do("POST", "/v2/app/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e", content)
		}, 400, "DIGEST_INVALID"},
		{"unknown upload id", func(t *testing.T, r *testRegistry) response {
			return r.do("PATCH", "/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef", content)
		}, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"malformed upload id", func(t *testing.T, r *testRegistry) response {
			return r.do("GET", "/v2/app/blobs/uploads/NOT-AN-ID", nil)
		}, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"forged upload token", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			u, _ := url.Parse(loc)
			tok := u.Query().Get("_state")
			payload, sig, _ := strings.Cut(tok, ".")
			forged := payload[:len(payload)-2] + "AA." + sig
			return r.do("PATCH", withQuery(loc, "_state", forged), content)
		}, 400, "BLOB_UPLOAD_INVALID"},
		{"token from a registry with another secret", func(t *testing.T, r *testRegistry) response {
			other := newTestRegistry(t, &Options{Secret: []byte("another secret")})
			loc := other.startUpload("app")
			return r.do("PATCH", r.url+strings.TrimPrefix(loc, other.url), content)
		}, 400, "BLOB_UPLOAD_INVALID"},
		{"token of another repository", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			return r.do("PATCH", strings.Replace(loc, "/v2/app/", "/v2/evil/", 1), content)
		}, 400, "BLOB_UPLOAD_INVALID"},
		{"cancelled upload", func(t *testing.T, r *testRegistry) response {
			loc := r.startUpload("app")
			r.expect(r.do("DELETE", loc, nil), 204, "")
			return r.do("PATCH", loc, content)
		}, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"put without digest", func(t *testing.T, r *testRegistry) response {
			return r.do("PUT", r.startUpload("app"), content)
		}, 400, "DIGEST_INVALID"},
		{"unsupported method", func(t *testing.T, r *testRegistry) response {
			return r.do("PATCH", "/v2/app/manifests/v1", nil)
		}, 405, "UNSUPPORTED"},
		{"bad pagination", func(t *testing.T, r *testRegistry) response {
			return r.do("GET", "/v2/app/tags/list?n=-1", nil)
		}, 400, "PAGINATION_NUMBER_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, &Options{Secret: []byte("test secret"), MaxManifestBytes: 4096})
			// Content the rows refer to; pushed before the "before" snapshot.
			r.pushImage("app", "v1", []byte("{}"))
			r.pushBlob("other", []byte(`{"other":1}`))
			before := keys(t, r.bucket, "blobs/")
			resp := tt.send(t, r)
			r.expect(resp, tt.status, tt.code)
			// Give an aborted handler time to finish before looking.
			time.Sleep(20 * time.Millisecond)
			after := keys(t, r.bucket, "blobs/")
			for _, k := range after {
				if !slices.Contains(before, k) {
					t.Errorf("new object %s after a refused request", k)
				}
			}
		})
	}
}

// TestDisconnectLeavesNoBlob: a client that goes away mid-blob leaves no
// object under blobs/ (the writer's context is cancelled).
func TestDisconnectLeavesNoBlob(t *testing.T) {
	r := newTestRegistry(t, nil)
	content := []byte(strings.Repeat("x", 1<<16))
	u, _ := url.Parse(r.url)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v2/app/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", digest.FromBytes(content), len(content))
	_, _ = conn.Write(content[:1000])
	time.Sleep(50 * time.Millisecond)
	_ = conn.Close()
	time.Sleep(100 * time.Millisecond)
	if got := keys(t, r.bucket, "blobs/"); len(got) != 0 {
		t.Fatalf("objects under blobs/ after disconnect: %v", got)
	}
	if got := keys(t, r.bucket, "repos/"); len(got) != 0 {
		t.Fatalf("objects under repos/ after disconnect: %v", got)
	}
}
