package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// distribution is a distribution/distribution registry (v3.1.2, the
// `distribution` of hack/install-clients.sh) run by a test as another
// registry, on a loopback port of its choosing. Its access log is how a
// test sees what it served.
type distribution struct {
	host      string // 127.0.0.1:port
	accessLog string // the process's stdout: one combined-format line a request
	appLog    string // its stderr

	mu      sync.Mutex
	cmd     *exec.Cmd
	stopped bool
}

// distributionOptions: htpasswd, when set, is the htpasswd file (bcrypt)
// the registry asks credentials from.
type distributionOptions struct {
	htpasswd string
}

// listeningOn is distribution's log line once it serves.
var listeningOn = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)

// startDistribution runs distribution with a filesystem store in a temp
// dir, and stops it when the test ends.
func startDistribution(t *testing.T, opts distributionOptions) *distribution {
	t.Helper()
	bin := testutil.Client(t, "distribution")
	dir := t.TempDir()
	d := &distribution{accessLog: filepath.Join(dir, "access.log"), appLog: filepath.Join(dir, "registry.log")}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
  secret: e2e upstream secret
`, filepath.Join(dir, "store"))
	if opts.htpasswd != "" {
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: upstream\n    path: %s\n", opts.htpasswd)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	access, err := os.Create(d.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	app, err := os.Create(d.appLog)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	// No OTLP exporter: nothing listens for traces.
	d.cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	d.cmd.Stdout, d.cmd.Stderr = access, app
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(t)
		_ = access.Close()
		_ = app.Close()
		if t.Failed() {
			b, _ := os.ReadFile(d.appLog)
			t.Logf("distribution %s log (tail):\n%s", d.host, tail(string(b), 3000))
		}
	})
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(d.appLog)
		if m := listeningOn.FindSubmatch(b); m != nil {
			d.host = string(m[1])
			return d
		}
		if d.cmd.ProcessState != nil {
			break
		}
	}
	b, _ := os.ReadFile(d.appLog)
	t.Fatalf("distribution did not start:\n%s", tail(string(b), 3000))
	return nil
}

// stop ends the process (connections to it are then refused); its logs stay.
func (d *distribution) stop(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.stopped = true
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
}

// accessEntry is one request of the access log.
type accessEntry struct {
	method, path, userAgent string
	status                  int
}

// combinedLine is gorilla's combined log format, as distribution writes it:
// host ident user [time] "METHOD URI PROTO" status size "referer" "agent".
var combinedLine = regexp.MustCompile(`"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"`)

// requests reads the access log: every request served so far, in order.
// A line is written once its response is complete.
func (d *distribution) requests(t *testing.T) []accessEntry {
	t.Helper()
	f, err := os.Open(d.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []accessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := combinedLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		path, _, _ := strings.Cut(m[2], "?")
		out = append(out, accessEntry{method: m[1], path: path, status: status, userAgent: m[4]})
	}
	return out
}

// count tallies the requests from index since on, with method, whose
// path holds part, by "METHOD path".
func (d *distribution) count(t *testing.T, since int, method, part string) map[string]int {
	t.Helper()
	out := map[string]int{}
	reqs := d.requests(t)
	for _, r := range reqs[min(since, len(reqs)):] {
		if r.method == method && strings.Contains(r.path, part) {
			out[r.method+" "+r.path]++
		}
	}
	return out
}
