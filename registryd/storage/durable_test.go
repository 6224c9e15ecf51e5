package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
)

// TestStreamDurable: the durable write path (which holds the final EOF
// back until the writer has written every byte, then fsyncs) stores
// exactly the content, on a local directory and elsewhere, through readers
// that return data with EOF and without; a refused stream stores nothing.
func TestStreamDurable(t *testing.T) {
	ctx := context.Background()
	content := bytes.Repeat([]byte("0123456789abcdef"), 70_000) // > one copy buffer
	buckets := map[string]func(t *testing.T) *blob.Bucket{
		"file": func(t *testing.T) *blob.Bucket {
			b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"mem": func(*testing.T) *blob.Bucket { return memblob.OpenBucket(nil) },
	}
	readers := map[string]func() *bytes.Reader{"plain": func() *bytes.Reader { return bytes.NewReader(content) }}
	for name, open := range buckets {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			defer b.Close()
			local := NewSmallReader(b)
			for rname, rd := range readers {
				for i, r := range []interface{ Read([]byte) (int, error) }{rd(), iotest.DataErrReader(rd()), iotest.OneByteReader(bytes.NewReader(content[:5000]))} {
					key := "blobs/sha256/" + rname + string(rune('a'+i))
					want := content
					if i == 2 {
						want = content[:5000]
					}
					n, err := StreamDurable(ctx, local, key, r, nil, nil)
					if err != nil || n != int64(len(want)) {
						t.Fatalf("reader %d: %d, %v", i, n, err)
					}
					got, err := b.ReadAll(ctx, key)
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("reader %d: stored %d bytes (%v), want %d", i, len(got), err, len(want))
					}
				}
			}
			refused := errors.New("refused")
			if _, err := StreamDurable(ctx, local, "blobs/sha256/refused", bytes.NewReader(content), nil, func(int64) error { return refused }); !errors.Is(err, refused) {
				t.Fatalf("refused stream: %v", err)
			}
			if ok, _ := b.Exists(ctx, "blobs/sha256/refused"); ok {
				t.Fatal("a refused stream left an object")
			}
			if err := WriteSmallDurable(ctx, local, "repos/a/_tags/v1", []byte("{}"), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
	// On a local directory, SyncFile reaches the file under its key.
	dir := t.TempDir()
	b, _ := fileblob.OpenBucket(dir, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	defer b.Close()
	if err := b.WriteAll(ctx, "blobs/x", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	local := NewSmallReader(b)
	if err := local.SyncFile(ctx, "blobs/x"); err != nil {
		t.Fatal(err)
	}
	if local.learnedRoot() == "" {
		t.Fatal("SyncFile did not find the bucket's directory")
	}
	if _, err := os.Stat(filepath.Join(local.learnedRoot(), "blobs", "x")); err != nil {
		t.Fatalf("learned root %q does not hold the key: %v", local.learnedRoot(), err)
	}
}
