package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
)

// TestCopyContentLinksOnFileBuckets: a finished single-part upload on a
// local directory becomes its blob by a hard link (no second write of
// every byte), with or without a key prefix; other drivers copy.
func TestCopyContentLinksOnFileBuckets(t *testing.T) {
	ctx := context.Background()
	content := []byte("layer bytes")
	d := digest.FromBytes(content)
	part := UploadPartKey("0123456789abcdef0123456789abcdef", 0, "", "0f0f")
	for _, prefix := range []string{"", "team/registry/"} {
		dir := t.TempDir()
		fb, err := fileblob.OpenBucket(dir, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
		if err != nil {
			t.Fatal(err)
		}
		b := fb
		if prefix != "" {
			b = blob.PrefixedBucket(fb, prefix)
		}
		s := New(b)
		if err := b.WriteAll(ctx, part, content, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.CopyContent(ctx, d, part, int64(len(content))); err != nil {
			t.Fatalf("prefix %q: %v", prefix, err)
		}
		src, err := os.Stat(filepath.Join(dir, prefix, part))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Stat(filepath.Join(dir, prefix, BlobKey(d)))
		if err != nil {
			t.Fatalf("prefix %q: blob not at its key: %v", prefix, err)
		}
		if !os.SameFile(src, dst) {
			t.Errorf("prefix %q: blob is a copy, want a hard link of the part", prefix)
		}
		// A second commit of the same content leaves the blob alone.
		if err := s.CopyContent(ctx, d, part, int64(len(content))); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, part); err != nil {
			t.Fatal(err)
		}
		got, err := b.ReadAll(ctx, BlobKey(d))
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("prefix %q: blob after the part is gone: %q, %v", prefix, got, err)
		}
		b.Close()
	}

	mb := memblob.OpenBucket(nil)
	defer mb.Close()
	if err := mb.WriteAll(ctx, part, content, nil); err != nil {
		t.Fatal(err)
	}
	if err := New(mb).CopyContent(ctx, d, part, int64(len(content))); err != nil {
		t.Fatal(err)
	}
	if got, err := mb.ReadAll(ctx, BlobKey(d)); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("memblob copy: %q, %v", got, err)
	}
}

// TestOpenBlobRange: the reader handed to net/http (the file itself)
// serves exactly the range asked for.
func TestOpenBlobRange(t *testing.T) {
	ctx := context.Background()
	content := []byte("0123456789")
	d := digest.FromBytes(content)
	b, err := fileblob.OpenBucket(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteAll(ctx, BlobKey(d), content, nil); err != nil {
		t.Fatal(err)
	}
	s := New(b)
	for _, c := range []struct {
		offset, length int64
		want           string
	}{{0, -1, "0123456789"}, {2, 3, "234"}, {7, -1, "789"}} {
		// Through a recorder (no ReadFrom) and a real connection
		// (ReadFrom).
		rd, err := s.OpenBlob(ctx, d, c.offset, c.length)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		if _, err := io.Copy(rec, rd); err != nil {
			t.Fatal(err)
		}
		rd.Close()
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rd, err := s.OpenBlob(r.Context(), d, c.offset, c.length)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			defer rd.Close()
			_, _ = io.Copy(w, rd)
		}))
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if rec.Body.String() != c.want || string(got) != c.want {
			t.Errorf("range %d+%d: %q through a recorder, %q over HTTP, want %q", c.offset, c.length, rec.Body.String(), got, c.want)
		}
	}
}

// TestManifestCacheFollowsTheBucket: cached manifest reads still see a
// deleted link, and a link rewritten with another media type.
func TestManifestCacheFollowsTheBucket(t *testing.T) {
	ctx := context.Background()
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	content := []byte(`{"schemaVersion":2}`)
	d := digest.FromBytes(content)
	const oci, docker = "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"
	s, other := New(b), New(b) // two replicas
	if err := s.PutManifest(ctx, "app", d, oci, content); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second read is served from the caches
		desc, got, err := s.GetManifest(ctx, "app", d)
		if err != nil || desc.MediaType != oci || !bytes.Equal(got, content) {
			t.Fatalf("GetManifest: %v, %q, %v", desc, got, err)
		}
	}
	if err := other.DeleteManifest(ctx, "app", d); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GetManifest(ctx, "app", d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetManifest after another replica deleted it: %v, want ErrNotFound", err)
	}
	if err := other.PutManifest(ctx, "app", d, docker, content); err != nil {
		t.Fatal(err)
	}
	if desc, err := s.StatManifest(ctx, "app", d); err != nil || desc.MediaType != docker {
		t.Fatalf("StatManifest after another replica re-pushed it: %v, %v; want %s", desc, err, docker)
	}
}

// TestSmallReader: once it has learned a file bucket's directory it reads
// files directly, with the bucket's answers for missing objects,
// "directories" and sidecar names.
func TestSmallReader(t *testing.T) {
	ctx := context.Background()
	b, err := fileblob.OpenBucket(t.TempDir(), nil) // with sidecars, as older buckets
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r := NewSmallReader(b)
	if _, err := r.ReadAll(ctx, "repos/app/_tags/v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing before learning: %v", err)
	}
	if err := b.WriteAll(ctx, "repos/app/_tags/v1", []byte("one"), nil); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if got, err := r.ReadAll(ctx, "repos/app/_tags/v1"); err != nil || string(got) != "one" {
			t.Fatalf("ReadAll: %q, %v", got, err)
		}
	}
	if r.learnedRoot() == "" {
		t.Fatal("the bucket's directory was not learned")
	}
	if err := b.WriteAll(ctx, "repos/app/_tags/v1", []byte("two"), nil); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadAll(ctx, "repos/app/_tags/v1"); err != nil || string(got) != "two" {
		t.Fatalf("after a rewrite: %q, %v", got, err)
	}
	for _, key := range []string{"repos/app/_tags/v2", "repos/app/_tags", "repos/app/_tags/v1.attrs"} {
		if _, err := r.ReadAll(ctx, key); !errors.Is(err, ErrNotFound) && err == nil {
			t.Errorf("%s: read %v, want an error", key, err)
		}
	}
	if _, err := r.ReadAll(ctx, "repos/app/_tags/v2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing after learning: %v", err)
	}
}

// TestSmallReaderAttributes: once the directory is learned, Attributes
// stats the file itself and answers what the bucket answers — the same
// size and modification time, ErrNotFound for a missing key and for a
// directory where a key would be — before learning and on other buckets
// the bucket answers; Store.Exists follows it.
func TestSmallReaderAttributes(t *testing.T) {
	ctx := context.Background()
	buckets := fileAndMemBuckets()
	for name, open := range buckets {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			defer b.Close()
			s := New(b)
			r := s.Local()
			check := func(stage string) {
				t.Helper()
				want, err := b.Attributes(ctx, "repos/app/_layers/x/link")
				if err != nil {
					t.Fatal(err)
				}
				got, err := r.Attributes(ctx, "repos/app/_layers/x/link")
				if err != nil || got.Size != want.Size || !got.ModTime.Equal(want.ModTime) {
					t.Fatalf("%s: %+v, %v; the bucket says size %d, modified %v", stage, got, err, want.Size, want.ModTime)
				}
				for _, key := range []string{"repos/app/_layers/y/link", "repos/app/_layers"} {
					if _, err := r.Attributes(ctx, key); !errors.Is(err, ErrNotFound) {
						t.Errorf("%s: %s: %v, want ErrNotFound", stage, key, err)
					}
					if ok, err := s.Exists(ctx, key); ok || err != nil {
						t.Errorf("%s: Exists(%s) = %v, %v", stage, key, ok, err)
					}
				}
				if ok, err := s.Exists(ctx, "repos/app/_layers/x/link"); !ok || err != nil {
					t.Errorf("%s: Exists of the link = %v, %v", stage, ok, err)
				}
			}
			if err := b.WriteAll(ctx, "repos/app/_layers/x/link", []byte("sha256:abc"), nil); err != nil {
				t.Fatal(err)
			}
			check("before learning")
			if _, err := r.ReadAll(ctx, "repos/app/_layers/x/link"); err != nil {
				t.Fatal(err)
			}
			if learned := r.learnedRoot() != ""; learned != (name == "file") {
				t.Fatalf("learned a directory: %v", learned)
			}
			check("after learning")
			time.Sleep(10 * time.Millisecond)
			if err := b.WriteAll(ctx, "repos/app/_layers/x/link", []byte("sha256:abcdef"), nil); err != nil {
				t.Fatal(err)
			}
			check("after a rewrite")
		})
	}
}

// TestCopyContent: a one-part upload becomes its blob by a server-side
// copy up to MaxServerSideCopy (S3's single-copy limit) and by streaming
// beyond it; both give the same verified content, and a source that does
// not match the digest never becomes a blob.
func TestCopyContent(t *testing.T) {
	ctx := context.Background()
	content := []byte("one part, copied or streamed")
	d := digest.FromBytes(content)
	for _, tt := range []struct {
		name  string
		limit int64
		src   []byte
		want  error
	}{
		{"server-side copy", 1 << 20, content, nil},
		{"streamed past the copy limit", 4, content, nil},
		{"streamed, wrong content", 4, []byte("something else entirely"), ErrSizeMismatch},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old := MaxServerSideCopy
			MaxServerSideCopy = tt.limit
			t.Cleanup(func() { MaxServerSideCopy = old })
			b := memblob.OpenBucket(nil)
			s := New(b)
			if err := b.WriteAll(ctx, "uploads/x/part", tt.src, nil); err != nil {
				t.Fatal(err)
			}
			err := s.CopyContent(ctx, d, "uploads/x/part", int64(len(content)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("CopyContent: %v, want %v", err, tt.want)
			}
			got, rerr := b.ReadAll(ctx, BlobKey(d))
			switch {
			case tt.want == nil && !bytes.Equal(got, content):
				t.Fatalf("blob holds %q (%v)", got, rerr)
			case tt.want != nil && rerr == nil:
				t.Fatalf("a mismatching source became blob %s", d)
			}
		})
	}
}
