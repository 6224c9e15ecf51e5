package auth

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// writeHtpasswd writes user:bcrypt lines (cheap cost: tests only).
func writeHtpasswd(t testing.TB, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	// Rename, as the kubelet swaps a Secret volume's files, so a reader
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newHtpasswdGuard(t testing.TB, o Options) (*Guard, string) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "htpasswd")
	writeHtpasswd(t, file, map[string]string{"alice": "alice-pw", "reader": "reader-pw"})
	if err := os.WriteFile(filepath.Join(dir, "readonly"), []byte("# pull only\nreader\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backend, err := NewHtpasswd(HtpasswdOptions{File: file, ReadOnlyFile: filepath.Join(dir, "readonly"), ReloadInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o.Mode, o.Backend, o.Secret = Htpasswd, backend, []byte("test secret")
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return g, file
}

func request(user, pass string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://reg.example/v2/", nil)
	if user != "" || pass != "" {
		r.SetBasicAuth(user, pass)
	}
	return r
}

// status is the HTTP status the error would be answered with (200 for nil).
func status(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return errcode.As(err).Code.Status
}

func TestGuardHtpasswd(t *testing.T) {
	push := Access{Repository: "team/app", Action: Push}
	pull := Access{Repository: "team/app", Action: Pull}
	tests := []struct {
		name       string
		anonPull   bool
		user, pass string
		access     Access
		want       int
	}{
		{"right password pushes", false, "alice", "alice-pw", push, 200},
		{"right password deletes", false, "alice", "alice-pw", Access{"team/app", Delete}, 200},
		{"right password lists", false, "alice", "alice-pw", Access{Action: List}, 200},
		{"wrong password", false, "alice", "nope", pull, 401},
		{"unknown user", false, "mallory", "alice-pw", pull, 401},
		{"empty password", false, "alice", "", pull, 401},
		{"no credentials, pull", false, "", "", pull, 401},
		{"no credentials, base", false, "", "", Access{}, 401},
		{"read-only user pulls", false, "reader", "reader-pw", pull, 200},
		{"read-only user lists", false, "reader", "reader-pw", Access{Action: List}, 200},
		{"read-only user cannot push", false, "reader", "reader-pw", push, 403},
		{"read-only user cannot delete", false, "reader", "reader-pw", Access{"team/app", Delete}, 403},
		{"anonymous pull on: pull", true, "", "", pull, 200},
		{"anonymous pull on: no push", true, "", "", push, 401},
		{"anonymous pull on: no delete", true, "", "", Access{"team/app", Delete}, 401},
		{"anonymous pull on: no catalog", true, "", "", Access{Action: List}, 401},
		{"anonymous pull on: login still checks", true, "", "", Access{}, 401},
		{"anonymous pull on: wrong password still refused", true, "alice", "nope", pull, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newHtpasswdGuard(t, Options{AnonymousPull: tc.anonPull})
			err := g.Authorize(context.Background(), request(tc.user, tc.pass), tc.access)
			if got := status(err); got != tc.want {
				t.Fatalf("status %d (%v), want %d", got, err, tc.want)
			}
			if tc.want == 401 {
				if h := errcode.As(err).Header.Get("WWW-Authenticate"); h != `Basic realm="stevedore"` {
					t.Errorf("challenge %q", h)
				}
			}
		})
	}
}

func TestGuardCountsFailures(t *testing.T) {
	reg := prometheus.NewRegistry()
	g, _ := newHtpasswdGuard(t, Options{Registerer: reg})
	ctx := context.Background()
	_ = g.Authorize(ctx, request("alice", "wrong"), Access{})
	_ = g.Authorize(ctx, request("alice", "wrong again"), Access{})
	_ = g.Authorize(ctx, request("reader", "reader-pw"), Access{"x", Push})
	_ = g.Authorize(ctx, request("", ""), Access{}) // a plain challenge is no failure
	if n := testutil.ToFloat64(g.failures.WithLabelValues(failureInvalid)); n != 2 {
		t.Errorf("invalid_credentials = %v, want 2", n)
	}
	if n := testutil.ToFloat64(g.failures.WithLabelValues(failureDenied)); n != 1 {
		t.Errorf("denied = %v, want 1", n)
	}
}

func TestHtpasswdRotation(t *testing.T) {
	g, file := newHtpasswdGuard(t, Options{})
	ctx := context.Background()
	if err := g.Authorize(ctx, request("alice", "alice-pw"), Access{}); err != nil {
		t.Fatal(err)
	}
	writeHtpasswd(t, file, map[string]string{"alice": "new-pw"})
	time.Sleep(5 * time.Millisecond) // the reload interval
	if err := g.Authorize(ctx, request("alice", "alice-pw"), Access{}); status(err) != 401 {
		t.Fatalf("old password after rotation: %v, want 401 (the success cache must be dropped)", err)
	}
	if err := g.Authorize(ctx, request("alice", "new-pw"), Access{}); err != nil {
		t.Fatalf("new password: %v", err)
	}
	// A file that vanishes mid-rotation keeps the entries in hand.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if err := g.Authorize(ctx, request("alice", "new-pw"), Access{}); err != nil {
		t.Fatalf("after the file vanished: %v", err)
	}
}

func TestHtpasswdSkipsNonBcrypt(t *testing.T) {
	users, skipped := parseHtpasswd([]byte("# comment\nmd5:$apr1$abc$def\nplain:secret\n\nbad line\n"))
	if len(users) != 0 || len(skipped) != 2 {
		t.Fatalf("users %v skipped %v: want none accepted, md5 and plain skipped", users, skipped)
	}
}

// getToken asks the guard's /token for scopes with Basic credentials.
func getToken(t *testing.T, g *Guard, user, pass string, scopes ...string) (int, string) {
	t.Helper()
	q := "service=stevedore"
	for _, s := range scopes {
		q += "&scope=" + s
	}
	r := httptest.NewRequest(http.MethodGet, "http://reg.example/token?"+q, nil)
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	g.TokenHandler().ServeHTTP(w, r)
	var resp tokenResponse
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	return w.Code, resp.Token
}

func bearer(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://reg.example/v2/", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

func TestTokenFlow(t *testing.T) {
	g, _ := newHtpasswdGuard(t, Options{Challenge: ChallengeBearer})
	ctx := context.Background()

	// The challenge sends the client to /token with the scope it needs.
	err := g.Authorize(ctx, request("", ""), Access{"team/app", Push})
	want := `Bearer realm="http://reg.example/token",service="stevedore",scope="repository:team/app:pull,push"`
	if h := errcode.As(err).Header.Get("WWW-Authenticate"); h != want {
		t.Fatalf("challenge %q, want %q", h, want)
	}

	code, tok := getToken(t, g, "reader", "reader-pw", "repository:team/app:pull,push")
	if code != 200 || tok == "" {
		t.Fatalf("token request: %d", code)
	}
	tests := []struct {
		name   string
		token  string
		access Access
		want   int
	}{
		{"granted pull", tok, Access{"team/app", Pull}, 200},
		{"asked for and refused push is 403", tok, Access{"team/app", Push}, 403},
		{"another repository sends back for a token", tok, Access{"other", Pull}, 401},
		{"base with an identity's token", tok, Access{}, 200},
		{"tampered signature", tok[:len(tok)-2] + "xx", Access{"team/app", Pull}, 401},
		{"garbage", "not-a-token", Access{"team/app", Pull}, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := status(g.Authorize(ctx, bearer(tc.token), tc.access)); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}

	t.Run("wrong password gets no token", func(t *testing.T) {
		if code, _ := getToken(t, g, "alice", "nope", "repository:team/app:pull"); code != 401 {
			t.Fatalf("status %d, want 401", code)
		}
	})
	t.Run("anonymous gets no token without anonymous pull", func(t *testing.T) {
		if code, _ := getToken(t, g, "", "", "repository:team/app:pull"); code != 401 {
			t.Fatalf("status %d, want 401", code)
		}
	})
	t.Run("a token from another secret is refused", func(t *testing.T) {
		other := newTokenSigner([]byte("other secret"), "stevedore")
		forged, _ := other.sign(&tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: "alice", Audience: jwt.ClaimStrings{"stevedore"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))},
			Access: []tokenAccess{{"repository", "team/app", []string{"push"}}}})
		if got := status(g.Authorize(ctx, bearer(forged), Access{"team/app", Push})); got != 401 {
			t.Fatalf("status %d, want 401", got)
		}
	})
	t.Run("an expired token is refused", func(t *testing.T) {
		old, _ := g.tokens.sign(&tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: "alice", Audience: jwt.ClaimStrings{"stevedore"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Minute))},
			Access: []tokenAccess{{"repository", "team/app", []string{"pull"}}}})
		if got := status(g.Authorize(ctx, bearer(old), Access{"team/app", Pull})); got != 401 {
			t.Fatalf("status %d, want 401", got)
		}
	})
	t.Run("alg none is refused", func(t *testing.T) {
		none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, &tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: "alice", Audience: jwt.ClaimStrings{"stevedore"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))},
			Access: []tokenAccess{{"repository", "team/app", []string{"push"}}}}).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if got := status(g.Authorize(ctx, bearer(none), Access{"team/app", Push})); got != 401 {
			t.Fatalf("status %d, want 401", got)
		}
	})
}

func TestTokenPasswordGrant(t *testing.T) {
	g, _ := newHtpasswdGuard(t, Options{Challenge: ChallengeBearer})
	form := "grant_type=password&username=alice&password=alice-pw&service=stevedore&scope=repository%3Ateam%2Fapp%3Apush&client_id=containerd"
	r := httptest.NewRequest(http.MethodPost, "http://reg.example/token", strings.NewReader(form))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	g.TokenHandler().ServeHTTP(w, r)
	var resp tokenResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if err := g.Authorize(context.Background(), bearer(resp.AccessToken), Access{"team/app", Push}); err != nil {
		t.Fatal(err)
	}
}

func TestParseScope(t *testing.T) {
	tests := []struct {
		in   string
		want []Access
		err  bool
	}{
		{"repository:a/b:pull", []Access{{"a/b", Pull}}, false},
		{"repository:a/b:pull,push", []Access{{"a/b", Pull}, {"a/b", Push}}, false},
		{"repository:host:5000/a:delete", []Access{{"host:5000/a", Delete}}, false},
		{"repository:a:*", []Access{{"a", Pull}, {"a", Push}, {"a", Delete}}, false},
		{"registry:catalog:*", []Access{{Action: List}}, false},
		{"repository:a:bogus", nil, false},
		{"something:x:pull", nil, false},
		{"nocolons", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseScope(tc.in)
			if (err != nil) != tc.err || len(got) != len(tc.want) {
				t.Fatalf("parseScope = %v, %v; want %v", got, err, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("parseScope = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestNoneLetsEverythingIn(t *testing.T) {
	g, err := New(Options{Mode: None, Secret: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []Access{{"x", Push}, {"x", Delete}, {Action: List}} {
		if err := g.Authorize(context.Background(), request("", ""), a); err != nil {
			t.Errorf("%v: %v", a, err)
		}
	}
	if _, err := New(Options{Mode: Htpasswd, Secret: []byte("s")}); err == nil || !strings.Contains(err.Error(), "backend") {
		t.Errorf("htpasswd without a backend: %v", err)
	}
}

// TestMountAsksForTheSourceScope: a token for pushing the target but silent
// on the mount's source is sent back for one covering both, so the mount is
// not quietly turned into a full upload.
func TestMountAsksForTheSourceScope(t *testing.T) {
	g, _ := newHtpasswdGuard(t, Options{Challenge: ChallengeBearer})
	_, tok := getToken(t, g, "alice", "alice-pw", "repository:team/app:pull,push")
	mount := func(token string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "http://reg.example/v2/team/app/blobs/uploads/?mount=sha256:abc&from=base/img", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		return r
	}
	err := g.Authorize(context.Background(), mount(tok), Access{"team/app", Push})
	want := `scope="repository:team/app:pull,push repository:base/img:pull",error="insufficient_scope"`
	if h := errcode.As(err).Header.Get("WWW-Authenticate"); status(err) != 401 || !strings.HasSuffix(h, want) {
		t.Fatalf("status %d, challenge %q, want one ending %s", status(err), h, want)
	}
	_, both := getToken(t, g, "alice", "alice-pw", "repository:team/app:pull,push", "repository:base/img:pull")
	if err := g.Authorize(context.Background(), mount(both), Access{"team/app", Push}); err != nil {
		t.Fatalf("with both scopes: %v", err)
	}
	// A reader's token that was refused the target is 403, not a loop.
	_, denied := getToken(t, g, "reader", "reader-pw", "repository:team/app:pull,push", "repository:base/img:pull")
	if got := status(g.Authorize(context.Background(), mount(denied), Access{"team/app", Push})); got != 403 {
		t.Fatalf("reader: status %d, want 403", got)
	}
}

// TestDeniedIsLogged: a refused access writes one "access denied" line
// naming the user and the access, whether the request carried credentials
// or a token /token issued with that access refused (the bearer challenge,
// which containerd follows): an operator reading the log of a pod stuck in
// ErrImagePull learns who was refused what either way.
func TestDeniedIsLogged(t *testing.T) {
	ctx := context.Background()
	for _, challenge := range []Challenge{ChallengeBasic, ChallengeBearer} {
		t.Run(string(challenge), func(t *testing.T) {
			var logs strings.Builder
			g, _ := newHtpasswdGuard(t, Options{Challenge: challenge, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			r := request("reader", "reader-pw")
			if challenge == ChallengeBearer {
				code, tok := getToken(t, g, "reader", "reader-pw", "repository:team/app:pull,push")
				if code != 200 {
					t.Fatalf("token request: %d", code)
				}
				r = bearer(tok)
			}
			if got := status(g.Authorize(ctx, r, Access{"team/app", Push})); got != 403 {
				t.Fatalf("status %d, want 403", got)
			}
			want := `msg="access denied" user=reader access="push team/app"`
			if n := strings.Count(logs.String(), want); n != 1 {
				t.Errorf("%d lines with %s in:\n%s", n, want, logs.String())
			}
		})
	}
}
