package storage

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"gocloud.dev/blob"
)

// Every write goes through Bucket.Upload, the drivers' single-call path,
// rather than NewWriter+Write: azureblob's Write path races its own upload
// goroutine when the upload fails (a nil-pointer panic in writer.Close,
// gocloud v0.47.0), and a failed write (an outage, a lost IfNotExist race)
// must come back as an error, not a crash.

// WriteSmall writes content to key in one request.
func WriteSmall(ctx context.Context, b *blob.Bucket, key string, content []byte, opts *blob.WriterOptions) error {
	return classify(b.Upload(ctx, key, bytes.NewReader(content), withContentType(opts)), key)
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
func Stream(ctx context.Context, b *blob.Bucket, key string, r io.Reader, opts *blob.WriterOptions, atEOF func(n int64) error) (int64, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := &guardedReader{r: r, atEOF: atEOF, cancel: cancel}
	err := b.Upload(wctx, key, g, withContentType(opts))
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
}

func (g *guardedReader) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.eof {
		return 0, io.EOF
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

func (g *guardedReader) fail(err error) error {
	g.err = err
	g.cancel(err)
	return err
}
