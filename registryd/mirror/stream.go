package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// Sizes of the queue between a fetch's reader and its store.
const (
	chunkSize   = 1 << 20
	queueChunks = 16
)

// streamAndStore copies the upstream's body (size bytes of d) to client and
// to the bucket at once. This goroutine reads the body, hashes it and
// writes it to client; another stores it, fed through a bounded queue of
// chunks, so the client gets the bytes at the upstream's pace rather than
// the bucket's (up to the queue's slack), and its last byte as soon as the
// digest verifies: it does not wait for the store's final flush (an fsync
// of the whole blob on a file bucket). A failed store after that leaves
// the client served and the cache without the blob (fetched again next
// time); that is logged, not returned. The content is hashed once, here:
// the queue ends with an error, never io.EOF, unless it verified.
func (m *Mirror) streamAndStore(ctx context.Context, rt *Route, d digest.Digest, size int64, body io.Reader, client *lenientWriter) error {
	q := &chunkQueue{ch: make(chan []byte, queueChunks), done: make(chan struct{}), pool: &m.chunks}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stored := make(chan error, 1)
	go func() {
		_, err := m.store.PutVerifiedBlob(ctx, rt.Local, d, size, q)
		close(q.done)
		stored <- err
	}()

	verifier := d.Verifier()
	var n int64
	var readErr error
	stopped := false
	for readErr == nil && !stopped {
		buf := q.get()
		k := 0
		for k < len(buf) && readErr == nil {
			var r int
			r, readErr = body.Read(buf[k:])
			k += r
		}
		if k > 0 {
			_, _ = verifier.Write(buf[:k])
			_, _ = client.Write(buf[:k])
			n += int64(k)
			stopped = !q.send(buf[:k]) // the store gave up: its error says why
		} else {
			q.put(buf)
		}
	}
	if stopped {
		q.closeWrite(nil)
		return <-stored
	}
	if errors.Is(readErr, io.EOF) {
		readErr = nil
	}
	verified := readErr == nil && n == size && verifier.Verified()
	if readErr != nil {
		readErr = rt.up.wrap(readErr)
	} else if !verified {
		readErr = fmt.Errorf("%s/%s@%s: upstream sent %d bytes not matching the digest (want %d): %w", rt.Upstream(), rt.Remote, d, n, size, storage.ErrDigestMismatch)
	}
	q.closeWrite(readErr)
	if verified {
		client.finish()
	}
	err := <-stored
	switch {
	case readErr != nil:
		return readErr
	case err != nil && verified:
		m.log.WarnContext(ctx, "mirror: storing a blob the client got whole failed; it is fetched again next time", "upstream", rt.Upstream(), "repository", rt.Remote, "digest", d, "error", err)
		return nil
	}
	return err
}

// chunkQueue is an io.Reader over chunks sent from another goroutine, at
// most cap(ch) of them in flight; chunks read are returned to pool.
type chunkQueue struct {
	ch   chan []byte
	done chan struct{} // closed when the reader stops reading
	err  error         // what Read returns after the last chunk; set before ch closes
	cur  []byte        // the rest of the chunk being read
	buf  []byte        // that chunk, whole, for the pool
	pool interface {
		Get() any
		Put(any)
	}
}

func (q *chunkQueue) get() []byte {
	if b, ok := q.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, chunkSize)
}

func (q *chunkQueue) put(b []byte) {
	if cap(b) == chunkSize {
		b = b[:chunkSize]
		q.pool.Put(&b)
	}
}

// send queues b for the reader; false when the reader stopped.
func (q *chunkQueue) send(b []byte) bool {
	select {
	case q.ch <- b:
		return true
	case <-q.done:
		return false
	}
}

// closeWrite ends the stream: Read returns err (io.EOF when nil) after
// the chunks queued.
func (q *chunkQueue) closeWrite(err error) {
	if err == nil {
		err = io.EOF
	}
	q.err = err
	close(q.ch)
}

func (q *chunkQueue) Read(p []byte) (int, error) {
	for len(q.cur) == 0 {
		if q.buf != nil {
			q.put(q.buf)
			q.buf = nil
		}
		b, ok := <-q.ch
		if !ok {
			return 0, q.err
		}
		q.cur, q.buf = b, b
	}
	n := copy(p, q.cur)
	q.cur = q.cur[n:]
	return n, nil
}
