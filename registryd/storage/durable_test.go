package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/iotest"
	"time"

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
	buckets := fileAndMemBuckets()
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

// fileAndMemBuckets opens a fresh bucket of each kind a test runs on: a
// local directory (as registryd opens it, no sidecars) and memory.
func fileAndMemBuckets() map[string]func(t *testing.T) *blob.Bucket {
	return map[string]func(t *testing.T) *blob.Bucket{
		"file": func(t *testing.T) *blob.Bucket {
			b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		"mem": func(*testing.T) *blob.Bucket { return memblob.OpenBucket(nil) },
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

// TestCopyOverlapsReadsAndWrites: while a block is being written, the copy
// goes on reading the next one. The writer holds its first write until a
// read past that block has happened; a copy that reads and writes in turn
// never gets there.
func TestCopyOverlapsReadsAndWrites(t *testing.T) {
	content := bytes.Repeat([]byte("y"), 1<<20)
	src := chunkReader{bytes.NewReader(content), 16 << 10}
	read := 0
	readPast := make(chan struct{})
	var pastFirstBlock sync.Once
	r := readFunc(func(p []byte) (int, error) {
		n, err := src.Read(p)
		if read += n; read > 64<<10 {
			pastFirstBlock.Do(func() { close(readPast) })
		}
		return n, err
	})
	var w recordingWriter
	first := true
	waiting := writeFunc(func(p []byte) (int, error) {
		if first {
			first = false
			select {
			case <-readPast:
			case <-time.After(10 * time.Second):
				return 0, errors.New("no read while the first block was being written")
			}
		}
		return w.Write(p)
	})
	g := &guardedReader{r: r, cancel: func(error) {}}
	n, err := g.WriteTo(waiting)
	if err != nil || n != int64(len(content)) || !bytes.Equal(w.buf.Bytes(), content) {
		t.Fatalf("copied %d (%v), %d stored", n, err, w.buf.Len())
	}
}

// TestCopyFailures: a failed write or read ends the copy with that error,
// what was written is a prefix of the content, in order, and a failed
// write stops the reading within three blocks of it (the one being
// written, the one being filled, and one more filled before the failure
// is seen).
func TestCopyFailures(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	diskFull := errors.New("no space left")
	reset := errors.New("connection reset")
	cases := []struct {
		name       string
		failWrite  int // fail the write after this many bytes (0: never)
		failRead   int // fail the read after this many bytes (0: never)
		want       error
		readAtMost int
	}{
		{name: "write fails", failWrite: 1 << 20, want: diskFull, readAtMost: 1<<20 + 3*maxCopyBlock},
		{name: "read fails", failRead: 3 << 20, want: reset, readAtMost: 3 << 20},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var read int
			r := readFunc(func(p []byte) (int, error) {
				if c.failRead > 0 && read >= c.failRead {
					return 0, reset
				}
				n := copy(p[:min(len(p), 32<<10)], content[read:])
				read += n
				if read == len(content) {
					return n, io.EOF
				}
				return n, nil
			})
			var w recordingWriter
			failing := writeFunc(func(p []byte) (int, error) {
				if c.failWrite > 0 && w.buf.Len()+len(p) > c.failWrite {
					k := c.failWrite - w.buf.Len()
					w.Write(p[:k])
					return k, diskFull
				}
				return w.Write(p)
			})
			var cancelled error
			g := &guardedReader{r: r, cancel: func(err error) { cancelled = err }}
			n, err := g.WriteTo(failing)
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			if n != int64(w.buf.Len()) || !bytes.Equal(w.buf.Bytes(), content[:w.buf.Len()]) {
				t.Fatalf("reported %d written, %d stored, not a prefix of the content", n, w.buf.Len())
			}
			if read > c.readAtMost {
				t.Errorf("read %d bytes, want at most %d", read, c.readAtMost)
			}
			if c.failRead > 0 && !errors.Is(cancelled, reset) {
				t.Errorf("a failed read did not cancel the write (%v)", cancelled)
			}
		})
	}
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

type writeFunc func([]byte) (int, error)

func (f writeFunc) Write(p []byte) (int, error) { return f(p) }
