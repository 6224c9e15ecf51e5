package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

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
	part := UploadPartKey("0123456789abcdef0123456789abcdef", 0)
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
		if err := s.CopyContent(ctx, d, part); err != nil {
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
		if err := s.CopyContent(ctx, d, part); err != nil {
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
	if err := New(mb).CopyContent(ctx, d, part); err != nil {
		t.Fatal(err)
	}
	if got, err := mb.ReadAll(ctx, BlobKey(d)); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("memblob copy: %q, %v", got, err)
	}
}
