package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// kind names one of the registries measured side by side.
type kind string

const (
	registryd    kind = "registryd"
	distribution kind = "distribution"
)

// binaries locates the two servers.
type binaries struct {
	Registryd, Distribution string
}

// server is one running registry process with its own fresh storage
// directory, started for one workload of one round.
type server struct {
	kind      kind
	cmd       *exec.Cmd
	dir       string
	addr      string // host:port of the registry API
	debugAddr string // registryd only: /metrics and /debug/pprof
	waitErr   chan error
}

// URL is the registry's base URL.
func (s *server) URL() string { return "http://" + s.addr }

// freePort asks the kernel for a loopback port nobody holds.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startServer starts k on a fresh directory under workDir. Both servers get
// the same treatment: their own empty directory on the same disk, their
// temp files in it (fileblob writes a temp file then renames; so does
// distribution's upload), one log line per request into a file.
func startServer(ctx context.Context, k kind, bins binaries, workDir string) (*server, error) {
	s, tmp, err := newServer(k, workDir, string(k)+"-")
	if err != nil {
		return nil, err
	}
	dir, addr := s.dir, s.addr
	switch k {
	case registryd:
		s.cmd = exec.Command(bins.Registryd, "--addr", addr, "--debug-addr", s.debugAddr, "--pprof",
			"--storage", "file://"+filepath.Join(dir, "store"), "--auth", "none")
		s.cmd.Env = append(os.Environ(), "STEVEDORE_HTTP_SECRET=bench", "TMPDIR="+tmp)
	case distribution:
		storage := fmt.Sprintf("  filesystem:\n    rootdirectory: %s\n", filepath.Join(dir, "store"))
		if err := s.useDistribution(bins.Distribution, tmp, storage); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown server %q", k)
	}
	return s, s.start(ctx)
}

// newServer prepares a server of kind k: its own new directory under
// workDir (pattern: os.MkdirTemp's), a tmp directory in it, a free port,
// and for registryd a debug port.
func newServer(k kind, workDir, pattern string) (s *server, tmp string, err error) {
	dir, err := os.MkdirTemp(workDir, pattern)
	if err != nil {
		return nil, "", err
	}
	tmp = filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, "", err
	}
	s = &server{kind: k, dir: dir, waitErr: make(chan error, 1)}
	if s.addr, err = freePort(); err != nil {
		return nil, "", err
	}
	if k == registryd {
		if s.debugAddr, err = freePort(); err != nil {
			return nil, "", err
		}
	}
	return s, tmp, nil
}

// start starts s.cmd with its output in a log file in s.dir and waits until
// the registry answers.
func (s *server) start(ctx context.Context) error {
	logf, err := os.Create(filepath.Join(s.dir, "server.log"))
	if err != nil {
		return err
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", s.kind, err)
	}
	go func() { s.waitErr <- s.cmd.Wait(); logf.Close() }()
	if err := s.waitReady(ctx); err != nil {
		s.stop()
		return err
	}
	return nil
}

// useDistribution makes s distribution serving its config, written to
// s.dir: the storage driver's block (storage, indented under "storage:"),
// the in-memory blob descriptor cache of its shipped config and its access
// log off, so that it, like registryd, logs one line per request.
func (s *server) useDistribution(bin, tmp, storage string) error {
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
%s  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: bench
`, storage, s.addr)
	path := filepath.Join(s.dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	s.cmd = exec.Command(bin, "serve", path)
	// distribution v3 exports OpenTelemetry traces by default; with no
	// collector that is only retries and noise.
	s.cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "OTEL_TRACES_EXPORTER=none")
	return nil
}

func (s *server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.waitErr:
			return fmt.Errorf("%s exited before it was ready (%v); log in %s", s.kind, err, s.dir)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/v2/", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 30s; log in %s", s.kind, s.dir)
}

// peakRSS is the process's high-water resident set (VmHWM) in bytes.
func (s *server) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// stop ends the process and removes its storage, so the next round starts
// from an empty disk.
func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.waitErr:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.waitErr
	}
	if os.Getenv("BENCH_KEEP") == "" {
		_ = os.RemoveAll(s.dir)
	}
}
