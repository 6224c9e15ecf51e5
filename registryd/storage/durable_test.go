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
// back until the writer has written every byte, then fsyncs) and the plain
// one (which sends a local file's pages to the disk as they arrive) store
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
					n, err = Stream(ctx, b, key+"-plain", bytes.NewReader(want), nil, nil)
					if err != nil || n != int64(len(want)) {
						t.Fatalf("reader %d, plain stream: %d, %v", i, n, err)
					}
					if got, err := b.ReadAll(ctx, key+"-plain"); err != nil || !bytes.Equal(got, want) {
						t.Fatalf("reader %d, plain stream: stored %d bytes (%v), want %d", i, len(got), err, len(want))
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
			if _, err := Stream(ctx, b, "uploads/x/refused", bytes.NewReader(content), nil, func(int64) error { return refused }); !errors.Is(err, refused) {
				t.Fatalf("refused plain stream: %v", err)
			}
			if ok, _ := b.Exists(ctx, "uploads/x/refused"); ok {
				t.Fatal("a refused plain stream left an object")
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

// TestCopyBlocks: the copy into a file writes in blocks that grow to
// maxCopyBlock however small the reads from the client are, so a GiB
// costs thousands of write(2)s, not 32,768 (io.Copy's 32 KiB); a short
// stream never gets a block larger than it needs.
func TestCopyBlocks(t *testing.T) {
	for _, size := range []int{100, 3 << 20, 8<<20 + 17} {
		content := bytes.Repeat([]byte("x"), size)
		var w recordingWriter
		g := &guardedReader{r: chunkReader{bytes.NewReader(content), 4 << 10}, cancel: func(error) {}}
		n, err := g.WriteTo(&w)
		if err != nil || n != int64(size) || !bytes.Equal(w.buf.Bytes(), content) {
			t.Fatalf("%d bytes: copied %d (%v), %d stored", size, n, err, w.buf.Len())
		}
		// 64, 128, 256 KiB, then maxCopyBlock each: at most 3 + size/max + 1.
		if most := 4 + size/maxCopyBlock; len(w.writes) > most {
			t.Errorf("%d bytes in %d writes, want at most %d (%v)", size, len(w.writes), most, w.writes)
		}
		for i, k := range w.writes[:len(w.writes)-1] {
			if k < 64<<10 {
				t.Errorf("%d bytes: write %d of %d bytes, smaller than the first block", size, i, k)
			}
		}
	}
}

type recordingWriter struct {
	buf    bytes.Buffer
	writes []int
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return w.buf.Write(p)
}

// chunkReader returns at most n bytes a read, as a socket does.
type chunkReader struct {
	r *bytes.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }
