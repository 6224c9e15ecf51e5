// Package e2e drives a built registryd binary as a black box: real
// processes, real clients (crane, oras, regctl, skopeo) from
// hack/install-clients.sh.
//
// REGISTRYD names the binary (absolute, or relative to the repository
// root; default: built from ./registryd into a temp dir); STEVEDORE_CLIENTS the directory holding the clients (default: the
// cache dir, then PATH). Under CI=true a missing client fails the test.
// CREDENTIAL_PROVIDER names stevedore-credential-provider the same way
// (default: built from ./cmd/stevedore-credential-provider by the test).
package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

var registrydBin string

// Tests that start registryd processes of their own and mostly wait on
// them call t.Parallel(); those that measure time or CPU (slowloris, the
// login storm, the SIGTERM drain, the deadlines, the storage outage) do
// not, so they run first, alone.
func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard()) // envtest logs through it
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	registrydBin = os.Getenv("REGISTRYD")
	if registrydBin != "" && !filepath.IsAbs(registrydBin) {
		// Relative to the repository root (go test runs in this directory).
		registrydBin, _ = filepath.Abs(filepath.Join("..", "..", registrydBin))
	}
	if registrydBin == "" {
		dir, err := os.MkdirTemp("", "registryd-e2e")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		registrydBin = filepath.Join(dir, "registryd")
		// -race in the processes under test, where the server's goroutines
		// run; the harness itself needs no race detector (make test runs
		// this package without -race, with REGISTRYD built the same way).
		cmd := exec.Command("go", "build", "-race", "-o", registrydBin, "github.com/stevedore-dev/stevedore/registryd")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building registryd:", err)
			return 1
		}
	}
	defer stopKube()
	return m.Run()
}

// registry is one running registryd process.
type registry struct {
	host string // 127.0.0.1:port
	log  string
}

func (r *registry) url() string { return "http://" + r.host }

// startRegistryd runs the binary on a free port over storage and stops it
// when the test ends.
func startRegistryd(t testing.TB, storage string, flags ...string) *registry {
	t.Helper()
	return startRegistrydEnv(t, storage, nil, flags...)
}

// startRegistrydEnv is startRegistryd with env (KEY=VALUE: a backend's
// credentials) added to the process environment. A port FreeAddr handed
// out can be taken before registryd binds it (the kernel hands the same
// range to outgoing connections: ci22 lost a test to it), so a registryd
// that exits with "address already in use" is started again on new ports.
func startRegistrydEnv(t testing.TB, storage string, env []string, flags ...string) *registry {
	t.Helper()
	for attempt := 1; ; attempt++ {
		r, portTaken := tryStartRegistryd(t, storage, env, flags...)
		if r != nil {
			return r
		}
		if !portTaken || attempt == 3 {
			t.Fatalf("registryd did not become ready (attempt %d)", attempt)
		}
		t.Logf("registryd lost its port to another process before binding it; starting it again (attempt %d)", attempt+1)
	}
}

// tryStartRegistryd starts registryd once and waits until it is ready; nil
// and whether it exited for a port that was taken, otherwise.
func tryStartRegistryd(t testing.TB, storage string, env []string, flags ...string) (*registry, bool) {
	t.Helper()
	r := &registry{host: testutil.FreeAddr(t), log: filepath.Join(t.TempDir(), "registryd.log")}
	// With --registry, registryd serves before its Repository cache has
	// synced; wait for /readyz too, on a debug address of our own if the
	// test gave none (another loopback address: FreeAddr may repeat ports).
	readyz := ""
	if slices.Contains(flags, "--registry") && !slices.Contains(flags, "--debug-addr") {
		readyz = strings.Replace(testutil.FreeAddr(t), "127.0.0.1:", "127.0.0.2:", 1)
		flags = append(slices.Clone(flags), "--debug-addr", readyz)
	}
	// The drain's delay (5 s by default) is for a Service's endpoints to
	// catch up; here it would only add 5 s to every stop. TestDrainOnSIGTERM
	// tests it.
	if !slices.Contains(flags, "--shutdown-delay") {
		flags = append(slices.Clone(flags), "--shutdown-delay", "0s")
	}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registrydBin, append([]string{"--addr", r.host, "--storage", storage}, flags...)...)
	cmd.Env = append(append(os.Environ(), "STEVEDORE_HTTP_SECRET=e2e shared secret"), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logf.Close()
		checkRaces(t, r.log)
		if t.Failed() {
			b, _ := os.ReadFile(r.log)
			t.Logf("registryd %s log (tail):\n%s", r.host, tail(string(b), 4000))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			b, _ := os.ReadFile(r.log)
			return nil, strings.Contains(string(b), "address already in use")
		default:
		}
		resp, err := http.Get(r.url() + "/v2/")
		if err == nil {
			resp.Body.Close()
			// 401: up, and asking for credentials (auth modes other than none).
			if (resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized) && ready(readyz) {
				return r, false
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, false
}

// checkRaces fails the test when the race detector in a registryd built
// with -race reported a data race into its log.
func checkRaces(t testing.TB, log string) {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Errorf("reading registryd log: %v", err)
		return
	}
	if i := strings.Index(string(b), "WARNING: DATA RACE"); i >= 0 {
		report := string(b[i:])
		t.Errorf("registryd reported a data race:\n%s", report[:min(len(report), 8000)])
	}
}

// ready reports whether /readyz on debugAddr answers 200 ("": not asked).
func ready(debugAddr string) bool {
	if debugAddr == "" {
		return true
	}
	resp, err := http.Get("http://" + debugAddr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// run executes a client with HOME in a temp dir (clients keep config
// there) and returns its stdout, failing the test on a non-zero exit.
func run(t *testing.T, home, bin string, args ...string) string {
	t.Helper()
	return runIn(t, "", home, bin, args...)
}

// runIn is run in working directory dir ("" for the test's own).
func runIn(t *testing.T, dir, home, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	t.Logf("%s %s: ok", filepath.Base(bin), strings.Join(args, " "))
	return stdout.String()
}
