package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"gocloud.dev/blob"
)

// Every write goes through Bucket.Upload, the drivers' single-call path,
// rather than NewWriter+Write: azureblob's Write path races its own upload
// goroutine when the upload fails (a nil-pointer panic in writer.Close,
// gocloud v0.47.0), and a failed write (an outage, a lost IfNotExist race)
// must come back as an error, not a crash.

// WriteSmall writes content to key in one request (again on a lost
// directory race: retryDirectoryRace).
func WriteSmall(ctx context.Context, b *blob.Bucket, key string, content []byte, opts *blob.WriterOptions) error {
	return retryDirectoryRace(ctx, func() error {
		return classify(b.Upload(ctx, key, bytes.NewReader(content), withContentType(opts)), key)
	})
}

// retryDirectoryRace runs write, a small write, and runs it again (up to
// directoryRaceTries times in all) when a backend that keeps objects as
// files lost a race with its own removal of an empty directory
// (directoryRace): that PUT wrote nothing, and the same PUT a moment later
// succeeds, so the client need not see a 503 for it.
func retryDirectoryRace(ctx context.Context, write func() error) error {
	for try := 1; ; try++ {
		err := write()
		if err == nil || try == directoryRaceTries || !directoryRace(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(try) * 5 * time.Millisecond):
		}
	}
}

// directoryRaceTries bounds the tries of a small write that lost a
// directory race: the race is a window of microseconds, so a third loss in
// a row is something else, and the client's retry after a 503 handles it.
const directoryRaceTries = 3

// WriteSmallDurable is WriteSmall whose data and name are on disk before
// it returns, on a local bucket (see durable.go); local is the bucket's
// SmallReader, which knows its directory.
func WriteSmallDurable(ctx context.Context, local *SmallReader, key string, content []byte, opts *blob.WriterOptions) error {
	return retryDirectoryRace(ctx, func() error {
		_, err := StreamDurable(ctx, local, key, bytes.NewReader(content), opts, nil)
		return err
	})
}

// StreamDurable is Stream whose data and name are on disk before it
// returns, on a local bucket (see durable.go).
func StreamDurable(ctx context.Context, local *SmallReader, key string, r io.Reader, opts *blob.WriterOptions, atEOF func(n int64) error) (int64, error) {
	n, err := stream(ctx, local.bucket, key, r, opts, atEOF, true)
	if err != nil {
		return n, err
	}
	return n, local.SyncDir(ctx, key)
}

// withContentType is a copy of opts (nil: none) with a content type,
// application/octet-stream unless opts names one.
func withContentType(opts *blob.WriterOptions) *blob.WriterOptions {
	o := blob.WriterOptions{}
	if opts != nil {
		o = *opts
	}
	if o.ContentType == "" {
		o.ContentType = "application/octet-stream"
	}
	return &o
}

// Stream writes r to key. atEOF, when given, sees the byte count once r is
// exhausted and may refuse the content (wrong size or digest). Any failure —
// of r, of atEOF, of ctx — cancels the write's context before the driver
// can commit, so a refused or cut-short stream never becomes an object;
// that error, not the driver's, is returned.
//
// On a local bucket the file's pages are sent to the disk as they arrive
// (writeBack), not left for the fsync that commits the upload they belong to.
func Stream(ctx context.Context, b *blob.Bucket, key string, r io.Reader, opts *blob.WriterOptions, atEOF func(n int64) error) (int64, error) {
	return stream(ctx, b, key, r, opts, atEOF, false)
}

// stream is Stream; when the driver hands its file over (fileblob), the
// file's pages go to the disk as they arrive and, with sync, the file is
// fsynced once every byte is in it, before the driver renames it into place.
func stream(ctx context.Context, b *blob.Bucket, key string, r io.Reader, opts *blob.WriterOptions, atEOF func(n int64) error, sync bool) (int64, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := &guardedReader{r: r, atEOF: atEOF, cancel: cancel, sync: sync}
	err := b.Upload(wctx, key, g, fileOptions(withContentType(opts), &g.file))
	if g.err != nil {
		return g.n, g.err
	}
	if err == nil && !g.eof {
		// A driver that returned before reading everything would have
		// stored a prefix; none does, but never report that as success.
		err = fmt.Errorf("%s: upload returned before the end of the content", key)
	}
	return g.n, classify(err, key)
}

type guardedReader struct {
	r      io.Reader
	n      int64
	atEOF  func(int64) error
	cancel context.CancelCauseFunc
	err    error
	eof    bool
	// file, the driver's file when it handed one over, has its pages
	// written back as they arrive and, with sync, is fsynced before the
	// final EOF.
	file *os.File
	sync bool
	// queued: the bytes before this offset were handed to writeBack.
	queued int64
	// synced: the final EOF was reached and the file synced.
	synced bool
}

// writeBackEvery is how many bytes a stream into a local file takes
// before it asks the kernel to start writing them out. Left to the
// kernel's dirty-page thresholds (10 % of memory), a 1 GiB push stays in
// the page cache until the commit's fsync, which then writes it all while
// the client waits (docs/registryd.md has the figures).
const writeBackEvery = 2 << 20

// Read serves drivers that read the content themselves (the object
// stores' uploaders).
func (g *guardedReader) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.eof {
		// The writer asked again after writing everything it was given:
		// all bytes are in the file now, so this is when to sync it.
		if err := g.syncFile(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	// Every byte read so far was written to the file before this Read.
	g.writeBack(g.n)
	n, err := g.readOnce(p)
	if err == io.EOF && g.sync && g.file != nil {
		// Come back for the EOF after writing these n bytes, so the sync
		// sees them.
		return n, nil
	}
	return n, err
}

// WriteTo is the copy when the driver's writer is a file (fileblob's
// *os.File.ReadFrom copies with io.Copy, which calls it): the content goes
// to the file in blocks of up to maxCopyBlock, not io.Copy's 32 KiB, so a
// GiB costs a few thousand write(2)s rather than 32,768. The block grows
// from 64 KiB while the content keeps coming, so a small blob never
// allocates more.
//
// Reading (the socket, and the digest a TeeReader in r computes) and
// writing (the copy into the page cache, and writeBack) run on two
// goroutines handing blocks over: done in turn, one upload keeps one core
// busy at most, and a push's last layer — or a one-layer push — streams at
// that rate while the other core idles. A file is also flushed as it fills
// (flusher), so the commit's fsync finds little left to make stable.
func (g *guardedReader) WriteTo(w io.Writer) (int64, error) {
	var fl *flusher
	if g.file != nil {
		f := g.file
		fl = startFlusher(func() { flushData(f) })
	}
	p := startFileWriter(w, func(written int64) {
		g.writeBack(written)
		fl.wrote(written)
	})
	size := 64 << 10
	var err error
	for !g.eof && err == nil && !p.failed.Load() {
		buf := p.block(size)
		n := 0
		for n < len(buf) && err == nil {
			var k int
			k, err = g.readOnce(buf[n:])
			n += k
		}
		if n > 0 {
			p.full <- buf[:n]
		}
		if n == len(buf) && size < maxCopyBlock {
			size *= 2
		}
	}
	written, werr := p.finish()
	fl.stop()
	switch {
	case werr != nil:
		return written, werr
	case err != nil && err != io.EOF:
		return written, err
	}
	return written, g.syncFile()
}

// maxCopyBlock bounds WriteTo's blocks: an upload in progress holds two,
// one being filled and one being written.
const maxCopyBlock = 256 << 10

// fileWriter is WriteTo's writing goroutine: it writes the blocks sent on
// full to w in order and hands each back on free. After a failed write it
// writes nothing more, sets failed, and keeps handing blocks back until
// full is closed.
type fileWriter struct {
	full   chan []byte
	free   chan []byte
	done   chan struct{}
	failed atomic.Bool
	// held counts the blocks made; written and err are the writer's, read
	// after done.
	held    int
	written int64
	err     error
}

func startFileWriter(w io.Writer, wrote func(written int64)) *fileWriter {
	p := &fileWriter{full: make(chan []byte), free: make(chan []byte, 2), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for b := range p.full {
			if p.err == nil {
				var n int
				n, p.err = w.Write(b)
				p.written += int64(n)
				if p.err != nil {
					p.failed.Store(true)
				} else {
					wrote(p.written)
				}
			}
			p.free <- b[:cap(b)]
		}
	}()
	return p
}

// block returns a block of size bytes to fill: a new one while fewer than
// two exist, else the one the writer hands back (replaced when it is
// smaller than size).
func (p *fileWriter) block(size int) []byte {
	for {
		if p.held < 2 {
			p.held++
			return make([]byte, size)
		}
		b := <-p.free
		if cap(b) >= size {
			return b[:size]
		}
		p.held--
	}
}

// finish waits for the blocks sent to be written and returns the count
// and the first write error.
func (p *fileWriter) finish() (int64, error) {
	close(p.full)
	<-p.done
	return p.written, p.err
}

// readOnce reads from the content once, counts, and checks the content at
// its end (atEOF); any failure cancels the write.
func (g *guardedReader) readOnce(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	g.n += int64(n)
	switch {
	case err == io.EOF:
		if g.atEOF != nil {
			if e := g.atEOF(g.n); e != nil {
				return n, g.fail(e)
			}
		}
		g.eof = true
	case err != nil:
		return n, g.fail(fmt.Errorf("reading the content: %w", err))
	}
	return n, err
}

// writeBack asks the kernel to start writing the file's bytes up to
// written, every writeBackEvery bytes.
func (g *guardedReader) writeBack(written int64) {
	if g.file != nil && written-g.queued >= writeBackEvery {
		writeBack(g.file, g.queued, written-g.queued)
		g.queued = written
	}
}

// syncFile fsyncs the file, once, when the stream is a durable one.
func (g *guardedReader) syncFile() error {
	if g.sync && g.file != nil && !g.synced {
		if err := g.file.Sync(); err != nil {
			return g.fail(fmt.Errorf("syncing the content: %w", err))
		}
	}
	g.synced = true
	return nil
}

func (g *guardedReader) fail(err error) error {
	g.err = err
	g.cancel(err)
	return err
}

// CreateSmall writes content to key only if no object has that key,
// atomically against every other writer, and answers ErrExists otherwise.
// Object stores do it with a conditional write (IfNotExist). fileblob's
// IfNotExist is a stat before a rename, under a lock of the one writer, so
// two writers can both pass it; on a local directory the content is staged
// under TempPrefix and hard-linked to key instead: link(2) fails when the
// name exists, across processes and pods sharing the volume.
func CreateSmall(ctx context.Context, local *SmallReader, key string, content []byte, opts *blob.WriterOptions) error {
	o := *withContentType(opts)
	o.IfNotExist = true
	var dirInfo os.FileInfo
	if !local.bucket.As(&dirInfo) || !plainKey(key) {
		return WriteSmall(ctx, local.bucket, key, content, &o)
	}
	var suffix [12]byte
	_, _ = rand.Read(suffix[:])
	tmp := TempPrefix + "create-" + hex.EncodeToString(suffix[:])
	o.IfNotExist = false
	if err := WriteSmallDurable(ctx, local, tmp, content, &o); err != nil {
		return err
	}
	// Removed whatever happens; one a crash leaves is swept by the
	// garbage collector with the other temp files.
	defer func() { _ = local.bucket.Delete(context.WithoutCancel(ctx), tmp) }()
	root := local.learnedRoot()
	if root == "" {
		rd, err := local.bucket.NewReader(ctx, tmp, nil)
		if err != nil {
			return classify(err, tmp)
		}
		local.learn(rd, tmp)
		_ = rd.Close()
		if root = local.learnedRoot(); root == "" {
			return fmt.Errorf("%s: cannot find the bucket's directory for an exclusive create", key)
		}
	}
	dst := root + filepath.FromSlash(key)
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if err := os.Link(root+filepath.FromSlash(tmp), dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", key, ErrExists)
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	return local.SyncDir(ctx, key)
}
