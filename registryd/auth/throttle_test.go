package auth

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// cpuTime is the CPU this process has used, user and system.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// guardServer serves GET /v2/ through g, over real HTTP.
func guardServer(t *testing.T, g *Guard) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.Authorize(r.Context(), r, Access{}); err != nil {
			errcode.Write(w, r, err)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (any of 127.0.0.0/8 reaches the server), as another host.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}}
}

func login(t *testing.T, c *http.Client, url, user, pass string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/v2/", nil)
	req.SetBasicAuth(user, pass)
	resp, err := c.Do(req)
	if err != nil {
		t.Error(err)
		return &http.Response{StatusCode: 0, Header: http.Header{}}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestFailedLoginStorm: bad passwords for one user from one address are
// refused unchecked (429 with Retry-After) once the throttle engages, so a
// storm of 1,000 costs well under a core-second (each would otherwise cost
// a bcrypt at htpasswd -B's cost, ~50-100 ms), while during the storm the
// user with the right password, already logged in from that address, and
// another user logging in for the first time from another address, get in.
func TestFailedLoginStorm(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "htpasswd")
	var lines string
	for _, u := range []string{"alice", "bob"} {
		// bcrypt.DefaultCost is what `htpasswd -B` writes.
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.DefaultCost)
		if err != nil {
			t.Fatal(err)
		}
		lines += u + ":" + string(h) + "\n"
	}
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	backend, err := NewHtpasswd(HtpasswdOptions{File: file, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Mode: Htpasswd, Backend: backend, Secret: []byte("s"), Registerer: prometheus.NewRegistry(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	url := guardServer(t, g)
	attacker, other := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")

	// Alice logs in before the storm, from the attacker's address.
	if resp := login(t, attacker, url, "alice", "alice-pw"); resp.StatusCode != 200 {
		t.Fatalf("alice before the storm: %d", resp.StatusCode)
	}
	// Bad passwords until the throttle engages.
	engaged := 0
	for i := range 30 {
		resp := login(t, attacker, url, "alice", fmt.Sprintf("guess-%d", i))
		if resp.StatusCode == http.StatusTooManyRequests {
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("429 with Retry-After %q, want seconds", resp.Header.Get("Retry-After"))
			}
			engaged = i + 1
			break
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad password %d: %d, want 401", i, resp.StatusCode)
		}
	}
	if engaged == 0 {
		t.Fatal("30 bad passwords in a row were all checked: no throttle")
	}
	t.Logf("throttle engaged at bad password %d", engaged)

	const storm, workers = 1000, 8
	var (
		next      atomic.Int32
		codes     sync.Map // status -> *atomic.Int32
		wg        sync.WaitGroup
		stop      = make(chan struct{})
		goodFails atomic.Int32
		goodOK    atomic.Int32
	)
	count := func(code int) {
		v, _ := codes.LoadOrStore(code, new(atomic.Int32))
		v.(*atomic.Int32).Add(1)
	}
	// The right passwords, all through the storm.
	var legit sync.WaitGroup
	legit.Add(1)
	go func() {
		defer legit.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, l := range []struct {
				c          *http.Client
				user, pass string
			}{{attacker, "alice", "alice-pw"}, {other, "bob", "bob-pw"}} {
				if resp := login(t, l.c, url, l.user, l.pass); resp.StatusCode != 200 {
					goodFails.Add(1)
					t.Errorf("%s with the right password during the storm: %d", l.user, resp.StatusCode)
				} else {
					goodOK.Add(1)
				}
			}
		}
	}()
	cpu0, wall0 := cpuTime(t), time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > storm {
					return
				}
				count(login(t, attacker, url, "alice", fmt.Sprintf("storm-%d", i)).StatusCode)
			}
		}()
	}
	wg.Wait()
	cpu, wall := cpuTime(t)-cpu0, time.Since(wall0)
	close(stop)
	legit.Wait()
	var summary string
	codes.Range(func(k, v any) bool {
		summary += fmt.Sprintf(" %d×%d", v.(*atomic.Int32).Load(), k)
		return true
	})
	t.Logf("%d bad passwords after the throttle engaged: %v CPU in %v (answers:%s); right passwords during it: %d ok, %d refused",
		storm, cpu.Round(time.Millisecond), wall.Round(time.Millisecond), summary, goodOK.Load(), goodFails.Load())
	budget := time.Second
	if raceDetector { // instrumented HTTP costs several times more; the figure that counts is without -race
		budget = 3 * time.Second
	}
	if cpu >= budget {
		t.Errorf("the storm cost %v of CPU, want < %v", cpu, budget)
	}
	if goodOK.Load() == 0 {
		t.Error("no right-password login was tried during the storm")
	}
}

// TestThrottleBuckets: which logins a throttled client may still make.
func TestThrottleBuckets(t *testing.T) {
	o := ThrottleOptions{PerUser: 3, PerUserEvery: time.Hour, PerClient: 5, PerClientEvery: time.Hour}
	req := func(addr string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = addr
		return r
	}
	fail := func(th *throttle, addr, user string, n int) {
		for range n {
			if _, w := th.take(req(addr), user); w > 0 {
				t.Fatalf("%s %s throttled early", addr, user)
			}
		}
	}
	tests := []struct {
		name  string
		setup func(*throttle)
		addr  string
		user  string
		want  bool // allowed
	}{
		{"fresh client", func(*throttle) {}, "192.0.2.1:1", "alice", true},
		{"a user's failures throttle that user at that address", func(th *throttle) { fail(th, "192.0.2.1:1", "alice", 3) }, "192.0.2.1:2", "alice", false},
		{"not another user there", func(th *throttle) { fail(th, "192.0.2.1:1", "alice", 3) }, "192.0.2.1:2", "bob", true},
		{"nor the user elsewhere", func(th *throttle) { fail(th, "192.0.2.1:1", "alice", 3) }, "192.0.2.2:1", "alice", true},
		{"a spray of users throttles the address", func(th *throttle) {
			for i := range 5 {
				fail(th, "192.0.2.1:1", fmt.Sprint("u", i), 1)
			}
		}, "192.0.2.1:1", "bob", false},
		{"successes give tokens back", func(th *throttle) {
			for range 10 {
				release, _ := th.take(req("192.0.2.1:1"), "alice")
				release()
			}
		}, "192.0.2.1:1", "alice", true},
		{"an IPv6 /64 is one client", func(th *throttle) {
			for i := range 5 {
				fail(th, fmt.Sprintf("[2001:db8::%x]:1", i+1), fmt.Sprint("u", i), 1)
			}
		}, "[2001:db8::ffff]:1", "bob", false},
		{"another /64 is another client", func(th *throttle) {
			for i := range 5 {
				fail(th, fmt.Sprintf("[2001:db8::%x]:1", i+1), fmt.Sprint("u", i), 1)
			}
		}, "[2001:db8:0:1::1]:1", "bob", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			th := newThrottle(o)
			tc.setup(th)
			_, wait := th.take(req(tc.addr), tc.user)
			if got := wait == 0; got != tc.want {
				t.Fatalf("allowed %v (wait %v), want %v", got, wait, tc.want)
			}
			if !tc.want && (wait <= 0 || wait > time.Hour) {
				t.Fatalf("wait %v, want up to one refill (1h)", wait)
			}
		})
	}
}

// TestThrottledLoginIs429: the Guard answers a throttled login 429
// TOOMANYREQUESTS with Retry-After, without checking the password.
func TestThrottledLoginIs429(t *testing.T) {
	g, _ := newHtpasswdGuard(t, Options{Throttle: ThrottleOptions{PerUser: 2, PerUserEvery: 30 * time.Second}})
	ctx := context.Background()
	for range 2 {
		if got := status(g.Authorize(ctx, request("alice", "nope"), Access{})); got != 401 {
			t.Fatalf("bad password: %d, want 401", got)
		}
	}
	err := g.Authorize(ctx, request("alice", "alice-pw"), Access{})
	e := errcode.As(err)
	if e.Code != errcode.TooManyRequests || e.RetryAfter < 1 || e.RetryAfter > 30 {
		t.Fatalf("after 2 failures: %v (Retry-After %d), want 429 TOOMANYREQUESTS with Retry-After ≤ 30", err, e.RetryAfter)
	}
	if got := status(g.Authorize(ctx, request("reader", "reader-pw"), Access{})); got != 200 {
		t.Fatalf("another user from the same address: %d, want 200", got)
	}
}
