package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// TestLoginStorm: the registryd binary in htpasswd mode, with entries at
// `htpasswd -B`'s bcrypt cost, under a storm of bad passwords for one user
// from one address. Once the throttle engages (429 TOOMANYREQUESTS with
// Retry-After), 1,000 more cost registryd less CPU (its own
// process_cpu_seconds_total) than three password checks did before it
// engaged — unthrottled they would cost a thousand; the ratio holds on the
// -race binary and beside other load, where a fixed CPU budget did not —
// while the user, logged in before the storm, and another user logging in
// for the first time from another address (one bcrypt inside the window)
// get in with their right passwords throughout.
func TestLoginStorm(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "htpasswd")
	var entries string
	for _, u := range []string{"alice", "bob"} {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-right-pw"), bcrypt.DefaultCost)
		if err != nil {
			t.Fatal(err)
		}
		entries += u + ":" + string(h) + "\n"
	}
	if err := os.WriteFile(file, []byte(entries), 0o600); err != nil {
		t.Fatal(err)
	}
	debug := testutil.FreeAddr(t)
	reg := startRegistryd(t, "file://"+t.TempDir(), "--auth", "htpasswd", "--htpasswd-file", file, "--debug-addr", debug)
	cpu := func() time.Duration {
		t.Helper()
		resp := do(t, "GET", "http://"+debug+"/metrics", nil, nil, 200)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := regexp.MustCompile(`(?m)^process_cpu_seconds_total (\S+)`).FindSubmatch(body)
		if m == nil {
			t.Fatal("no process_cpu_seconds_total in /metrics")
		}
		s, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return time.Duration(s * float64(time.Second))
	}
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}}
	}
	attacker, elsewhere := from("127.0.0.1"), from("127.0.0.2")
	login := func(c *http.Client, user, pass string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, reg.url()+"/v2/", nil)
		req.SetBasicAuth(user, pass)
		resp, err := c.Do(req)
		if err != nil {
			t.Error(err)
			return &http.Response{Header: http.Header{}}
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	if code := login(attacker, "alice", "alice-right-pw").StatusCode; code != 200 {
		t.Fatalf("alice before the storm: %d", code)
	}
	before := cpu()
	engaged := 0
	for i := range 30 {
		resp := login(attacker, "alice", fmt.Sprint("guess-", i))
		if resp.StatusCode == http.StatusTooManyRequests {
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("429 with Retry-After %q", resp.Header.Get("Retry-After"))
			}
			engaged = i + 1
			break
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad password %d: %d", i, resp.StatusCode)
		}
	}
	if engaged == 0 {
		t.Fatalf("30 bad passwords, each checked (%v of registryd CPU): no throttle", cpu()-before)
	}
	if engaged < 2 {
		t.Fatalf("throttle engaged at the first bad password: no check to measure")
	}
	checked := cpu() - before
	perCheck := checked / time.Duration(engaged-1)
	t.Logf("throttle engaged at bad password %d; the %d checked cost %v of registryd CPU (%v each)", engaged, engaged-1, checked, perCheck)

	const storm, workers = 1000, 8
	var (
		next, throttled, ok, refused atomic.Int32
		wg                           sync.WaitGroup
		stop                         = make(chan struct{})
		legit                        sync.WaitGroup
	)
	legit.Add(1)
	go func() {
		defer legit.Done()
		for {
			for _, l := range []struct {
				c    *http.Client
				user string
			}{{attacker, "alice"}, {elsewhere, "bob"}} {
				if code := login(l.c, l.user, l.user+"-right-pw").StatusCode; code == 200 {
					ok.Add(1)
				} else {
					refused.Add(1)
					t.Errorf("%s with the right password during the storm: %d", l.user, code)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	start, wall := cpu(), time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= storm {
				if login(attacker, "alice", "storm").StatusCode == http.StatusTooManyRequests {
					throttled.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	used := cpu() - start
	close(stop)
	legit.Wait()
	t.Logf("%d bad passwords after the throttle engaged: %v of registryd CPU in %v, %d answered 429; right passwords meanwhile: %d in, %d refused",
		storm, used, time.Since(wall).Round(time.Millisecond), throttled.Load(), ok.Load(), refused.Load())
	if used >= 3*perCheck {
		t.Errorf("the storm cost registryd %v of CPU, want < 3 password checks (%v)", used, 3*perCheck)
	}
	if ok.Load() < 2 {
		t.Error("the right passwords were not tried during the storm")
	}
}
