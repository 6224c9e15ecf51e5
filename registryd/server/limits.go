package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// Defaults of the per-request limits in Options.
const (
	defaultMaxConcurrentRequests = 1024
	defaultBodyTimeout           = 30 * time.Second
	defaultBodyMinBytes          = 64 << 10
)

// errBodyStalled: a request or response body moved fewer than the minimum
// bytes in one window.
var errBodyStalled = errors.New("body transfer stalled")

// progress enforces a minimum transfer rate on a body: within any window
// of time spent waiting on the client, at least minBytes must move. Only
// time blocked in the connection's Read or Write counts, so a slow backend
// between reads is never blamed on the client. Each I/O call runs under a
// deadline at the end of the window's remaining budget; once minBytes
// have moved a new window starts. So a transfer of any size passes as long
// as it keeps moving, and one that trickles (or stops) is cut off within
// one window: there is no absolute deadline on a body, and a 10 GiB layer
// at 10 MB/s takes 17 minutes.
type progress struct {
	window   time.Duration
	minBytes int64
	set      func(time.Time) error // the connection's Set{Read,Write}Deadline
	moved    int64                 // bytes in this window
	waited   time.Duration         // time blocked on the client in this window
	began    time.Time             // start of the I/O call in progress
	// supported is false where the writer has no connection (a
	// ResponseRecorder): then nothing is enforced.
	supported bool
	timedOut  bool
}

// newProgress clears any deadline already set (an http.Server's
// ReadTimeout or WriteTimeout): from here on progress decides.
func newProgress(window time.Duration, minBytes int64, set func(time.Time) error) *progress {
	p := &progress{window: window, minBytes: minBytes, set: set}
	p.supported = window > 0 && set(time.Time{}) == nil
	return p
}

// before arms the deadline for an I/O call.
func (p *progress) before() {
	if p.supported {
		p.began = time.Now()
		_ = p.set(p.began.Add(p.window - p.waited))
	}
}

// after records an I/O call that moved n bytes.
func (p *progress) after(n int64) {
	if !p.supported {
		return
	}
	p.waited += time.Since(p.began)
	p.moved += n
	if p.moved >= p.minBytes {
		p.moved, p.waited = 0, 0
	}
}

// renew sets a deadline one window away, for the bytes net/http writes
// after the handler returns.
func (p *progress) renew() {
	if p.supported {
		_ = p.set(time.Now().Add(p.window))
	}
}

// check turns a deadline error into errBodyStalled, remembering it so the
// dispatcher answers 408 however the handler wrapped it.
func (p *progress) check(err error) error {
	if p.supported && err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		p.timedOut = true
		return fmt.Errorf("%w: fewer than %d bytes in %s: %w", errBodyStalled, p.minBytes, p.window, err)
	}
	return err
}

// progressReader is a request body under a progress deadline. At EOF the
// read deadline is cleared: net/http keeps reading the connection in the
// background to notice a client that goes away, and a deadline firing
// there would cancel the request's context while the handler still works.
type progressReader struct {
	io.ReadCloser
	p *progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	r.p.before()
	n, err := r.ReadCloser.Read(b)
	r.p.after(int64(n))
	if errors.Is(err, io.EOF) && r.p.supported {
		_ = r.p.set(time.Time{})
	}
	return n, r.p.check(err)
}

// progressWriter is a response under a progress deadline.
type progressWriter struct {
	http.ResponseWriter
	p *progress
	// buffers hold copyBufferSize-byte buffers for ReadFrom.
	buffers *sync.Pool
}

// copyBufferSize is the size of a response write when copying a body: the
// window's minimum, within [4 KiB, 1 MiB] (64 KiB by default; 32 KiB to
// 4 MiB measured the same).
func copyBufferSize(minBytes int64) int { return int(min(max(minBytes, 4<<10), 1<<20)) }

func (w *progressWriter) Write(b []byte) (int, error) {
	w.p.before()
	n, err := w.ResponseWriter.Write(b)
	w.p.after(int64(n))
	return n, w.p.check(err)
}

// ReadFrom copies src through Write, in writes of at most the window's
// minimum: net/http ends the connection at the first write that fails, so a
// write must be one a client keeping the minimum rate finishes within a
// window. It never hands the connection a file for sendfile(2): on loopback
// here sendfile sent a 1 GiB layer at 1,348 MiB/s, reads and writes at
// 1,800-1,960 MiB/s, as distribution (which copies) does (docs/registryd.md).
func (w *progressWriter) ReadFrom(src io.Reader) (int64, error) {
	buf := w.buffers.Get().(*[]byte)
	defer w.buffers.Put(buf)
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{src}, *buf)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withProgressDeadlines puts the request body and the response under
// progress deadlines.
func (s *server) withProgressDeadlines(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *progress, *progress) {
	rc := http.NewResponseController(w)
	write := newProgress(s.opts.BodyTimeout, s.opts.BodyMinBytes, rc.SetWriteDeadline)
	read := &progress{}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		read = newProgress(s.opts.BodyTimeout, s.opts.BodyMinBytes, rc.SetReadDeadline)
		r.Body = &progressReader{ReadCloser: r.Body, p: read}
	} else {
		// No body to wait for: no read deadline either (see progressReader),
		// including one the http.Server's ReadTimeout set.
		_ = rc.SetReadDeadline(time.Time{})
	}
	return &progressWriter{ResponseWriter: w, p: write, buffers: &s.copyBuffers}, read, write
}

// admit takes one of the MaxConcurrentRequests slots, or answers
// TOOMANYREQUESTS at once: a request waiting for a slot would hold its
// connection and memory anyway, which is what the cap is for.
func (s *server) admit() (release func(), ok bool) {
	if s.slots == nil {
		return func() {}, true
	}
	select {
	case s.slots <- struct{}{}:
		s.metrics.inflight.Inc()
		return func() { <-s.slots; s.metrics.inflight.Dec() }, true
	default:
		s.metrics.rejected.Inc()
		return nil, false
	}
}
