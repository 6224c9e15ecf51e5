package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
)

// dialRegistry opens a raw connection to r whose receive buffer is set
// small before the handshake, so the window it advertises stays small and
// a response the client does not read fills the buffers after a few MiB.
func dialRegistry(t *testing.T, r *testRegistry) net.Conn {
	t.Helper()
	u, _ := url.Parse(r.url)
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		return errors.Join(err, serr)
	}}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestBodyProgressDeadlines: a body that trickles is cut off within about
// one window, in either direction, while one that keeps moving passes
// however long it takes.
func TestBodyProgressDeadlines(t *testing.T) {
	const window = 500 * time.Millisecond
	opts := &Options{BodyTimeout: window, BodyMinBytes: 4 << 10}

	t.Run("trickled request body is cut off", func(t *testing.T) {
		r := newTestRegistry(t, opts)
		loc := r.startUpload("app")
		u, _ := url.Parse(loc)
		conn := dialRegistry(t, r)
		start := time.Now()
		fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n", u.RequestURI())
		// One byte every 100 ms: 5 bytes a window, far under 4 KiB.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					if _, err := conn.Write([]byte{'x'}); err != nil {
						return
					}
				}
			}
		}()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("no answer after %s: %v", elapsed, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || elapsed > 4*window {
			t.Fatalf("trickled PATCH: %d after %s, want 408 within about %s", resp.StatusCode, elapsed, window)
		}
	})

	t.Run("steady request body outlasting many windows passes", func(t *testing.T) {
		r := newTestRegistry(t, opts)
		const chunk, chunks = 8 << 10, 30 // 8 KiB every 100 ms: 3 s, six windows
		pr, pw := io.Pipe()
		go func() {
			for i := range chunks {
				_, _ = pw.Write([]byte(strings.Repeat(string(rune('a'+i%26)), chunk)))
				time.Sleep(100 * time.Millisecond)
			}
			_ = pw.Close()
		}()
		var want []byte
		for i := range chunks {
			want = append(want, strings.Repeat(string(rune('a'+i%26)), chunk)...)
		}
		d := digest.FromBytes(want)
		req, _ := http.NewRequestWithContext(t.Context(), "POST", r.url+"/v2/app/blobs/uploads/?digest="+d.String(), pr)
		req.ContentLength = int64(len(want))
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("steady push: %d after %s", resp.StatusCode, time.Since(start))
		}
	})

	// 12 MiB (more than the server's send buffer can take, at most 4 MiB
	// by Linux's default tcp_wmem) read 32 KiB every 20 ms: about 8 s,
	// sixteen windows, with the server's send buffer full all along: a
	// write waits for the client's reads (see notSentLowWater).
	for _, bucket := range []struct {
		name string
		open func(t *testing.T) *blob.Bucket
	}{
		{"memory", func(t *testing.T) *blob.Bucket { return memblob.OpenBucket(nil) }},
		{"file", func(t *testing.T) *blob.Bucket {
			b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
	} {
		t.Run("response from a "+bucket.name+" bucket to a slow steady reader passes", func(t *testing.T) {
			b := bucket.open(t)
			t.Cleanup(func() { _ = b.Close() })
			r := serveBucket(t, b, opts)
			big := []byte(strings.Repeat("fedcba9876543210", 12<<16))
			d := r.pushBlob("app", big)
			conn := dialRegistry(t, r)
			fmt.Fprintf(conn, "GET /v2/app/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", d)
			_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			v := d.Verifier()
			var n int64
			buf := make([]byte, 32<<10)
			for {
				m, err := io.ReadFull(resp.Body, buf)
				n += int64(m)
				_, _ = v.Write(buf[:m])
				if err != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n != int64(len(big)) || !v.Verified() {
				t.Fatalf("read %d of %d bytes (verified %v): a reader that kept the minimum rate was cut off", n, len(big), v.Verified())
			}
		})
	}

	t.Run("response to a client that stops reading is cut off", func(t *testing.T) {
		r := newTestRegistry(t, opts)
		// 16 MiB: more than the server's send buffer (at most 4 MiB by
		// Linux's default tcp_wmem) and the client's small receive buffer.
		big := []byte(strings.Repeat("0123456789abcdef", 1<<20))
		d := r.pushBlob("app", big)
		conn := dialRegistry(t, r)
		fmt.Fprintf(conn, "GET /v2/app/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", d)
		time.Sleep(6 * window) // read nothing: the server's writes block, then time out
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n >= int64(len(big)) || err == nil {
			t.Fatalf("read %d of %d bytes (error %v): the server waited for a reader that never came", n, len(big), err)
		}
	})
}

// TestConcurrencyCap: requests beyond MaxConcurrentRequests get 429
// TOOMANYREQUESTS with Retry-After at once; served again once a slot frees.
func TestConcurrencyCap(t *testing.T) {
	r := newTestRegistry(t, &Options{MaxConcurrentRequests: 2})
	var wg sync.WaitGroup
	var pipes []*io.PipeWriter
	for range 2 {
		pr, pw := io.Pipe()
		pipes = append(pipes, pw)
		req, _ := http.NewRequestWithContext(t.Context(), "POST", r.url+"/v2/app/blobs/uploads/?digest="+digest.FromString("x").String(), pr)
		req.ContentLength = 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	// Wait until both hold a slot.
	deadline := time.Now().Add(5 * time.Second)
	var resp response
	for time.Now().Before(deadline) {
		if resp = r.do("GET", "/v2/", nil); resp.status == http.StatusTooManyRequests {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.expect(resp, http.StatusTooManyRequests, "TOOMANYREQUESTS")
	if resp.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	for _, pw := range pipes {
		_, _ = pw.Write([]byte("x"))
		_ = pw.Close()
	}
	wg.Wait()
	r.expect(r.do("GET", "/v2/", nil), http.StatusOK, "")
}
