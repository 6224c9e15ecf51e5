package e2e

import (
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// process is a registryd the test signals itself.
type process struct {
	registry
	debug string // host:port of /readyz
	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has exited
}

// startProcess starts registryd on a file bucket with a debug port and
// flags, and waits until it is ready.
func startProcess(t *testing.T, flags ...string) *process {
	t.Helper()
	p := &process{
		registry: registry{host: testutil.FreeAddr(t), log: filepath.Join(t.TempDir(), "registryd.log")},
		debug:    testutil.FreeAddr(t), done: make(chan struct{}),
	}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--addr", p.host, "--debug-addr", p.debug, "--storage", "file://" + t.TempDir()}, flags...)
	p.cmd = exec.Command(registrydBin, args...)
	p.cmd.Env = append(os.Environ(), "STEVEDORE_HTTP_SECRET=e2e shared secret")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		_ = logf.Close()
		checkRaces(t, p.log)
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("registryd log (tail):\n%s", tail(string(b), 4000))
		}
	})
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if p.readyz() == http.StatusOK {
			return p
		}
	}
	t.Fatal("registryd did not become ready")
	return nil
}

// readyz is the status of /readyz, 0 when it does not answer.
func (p *process) readyz() int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + p.debug + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// paced reads n pseudo-random bytes at about rate bytes a second.
type paced struct {
	r     io.Reader
	rate  float64
	start time.Time
	n     int64
}

func newPaced(n int64, rate float64) *paced {
	return &paced{r: seeded(n, 0), rate: rate}
}

// seeded reads n deterministic pseudo-random bytes; seeded(n, s) for
// distinct s are distinct blobs.
func seeded(n int64, s byte) io.Reader {
	var seed [32]byte
	seed[0] = s
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// seededDigest is the digest of seeded(n, s).
func seededDigest(n int64, s byte) digest.Digest {
	h := sha256.New()
	_, _ = io.Copy(h, seeded(n, s))
	return digest.NewDigest(digest.SHA256, h)
}

func (p *paced) Read(b []byte) (int, error) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	if ahead := time.Duration(float64(p.n)/p.rate*float64(time.Second)) - time.Since(p.start); ahead > 0 {
		time.Sleep(ahead)
	}
	n, err := p.r.Read(b[:min(len(b), 64<<10)])
	p.n += int64(n)
	return n, err
}

// TestDrainOnSIGTERM: SIGTERM in the middle of a 256 MiB push. /readyz
// fails at once, registryd keeps serving through --shutdown-delay, then
// stops accepting connections but lets the push finish with 201, and exits
// within delay + timeout. E2E_DRAIN_MIB and E2E_DRAIN_RATE_MIB change the
// push (`make test-full-size`: 1 GiB at 100 MiB/s).
func TestDrainOnSIGTERM(t *testing.T) {
	const (
		delay   = 2 * time.Second
		timeout = 20 * time.Second
	)
	size := int64(envInt("E2E_DRAIN_MIB", 256)) << 20
	rate := envInt("E2E_DRAIN_RATE_MIB", 40) << 20 // bytes a second: 256 MiB take about 6.4 s
	p := startProcess(t, "--shutdown-delay", delay.String(), "--shutdown-timeout", timeout.String())
	d := seededDigest(size, 0)

	pushed := make(chan error, 1)
	status := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", p.url()+"/v2/drain/blobs/uploads/?digest="+d.String(), newPaced(size, float64(rate)))
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			pushed <- err
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
		pushed <- nil
	}()
	time.Sleep(time.Second)
	sigterm := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Not ready at once.
	for p.readyz() != http.StatusServiceUnavailable {
		if time.Since(sigterm) > 500*time.Millisecond {
			t.Fatal("/readyz still answers ready 500 ms after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Still serving new requests during the delay.
	if resp, err := http.Get(p.url() + "/v2/"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ during the shutdown delay: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// After the delay the listener is closed, while the push goes on.
	time.Sleep(delay + 500*time.Millisecond - time.Since(sigterm))
	if c, err := net.DialTimeout("tcp", p.host, time.Second); err == nil {
		c.Close()
		t.Error("registryd still accepts connections after --shutdown-delay")
	}
	select {
	case err := <-pushed:
		t.Fatalf("push ended before the drain began: %v", err)
	default:
	}
	if err := <-pushed; err != nil {
		t.Fatalf("push cut off by the shutdown: %v", err)
	}
	if got := <-status; got != http.StatusCreated {
		t.Fatalf("push answered %d, want 201", got)
	}
	pushDone := time.Since(sigterm)
	select {
	case <-p.done:
	case <-time.After(delay + timeout - time.Since(sigterm)):
		t.Fatalf("registryd still running %s after SIGTERM (delay %s + timeout %s)", time.Since(sigterm), delay, timeout)
	}
	exited := time.Since(sigterm)
	t.Logf("push finished %s after SIGTERM, process exited after %s, exit %v", pushDone.Round(time.Millisecond), exited.Round(time.Millisecond), p.cmd.ProcessState)
	if !p.cmd.ProcessState.Success() {
		t.Fatalf("registryd exited with %v", p.cmd.ProcessState)
	}
}
