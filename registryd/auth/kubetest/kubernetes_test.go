package kubetest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/testenv"
	"github.com/stevedore-dev/stevedore/registryd/auth"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// api is the package's one real API server (envtest), started by the first
// test that needs it and stopped by TestMain.
var api struct {
	once sync.Once
	env  *testenv.Env
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if api.env != nil {
		_ = api.env.Stop()
	}
	os.Exit(code)
}

func apiServer(t *testing.T) *testenv.Env {
	t.Helper()
	api.once.Do(func() { api.env, api.err = testenv.Start() })
	if api.err != nil {
		t.Fatal(api.err)
	}
	return api.env
}

// kubeFixture is a namespace on the real API server with ServiceAccounts,
// and a client for registryd that counts the reviews it sends.
type kubeFixture struct {
	t               *testing.T
	env             *testenv.Env
	ns              string
	reviews, checks atomic.Int32
}

const registryName = "main"

func newKubeFixture(t *testing.T) *kubeFixture {
	t.Helper()
	env := apiServer(t)
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		ns = ns[:50]
	}
	ns = strings.Trim(ns, "-")
	if err := env.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	return &kubeFixture{t: t, env: env, ns: ns}
}

// client returns a clientset for registryd talking to host (default: the
// API server itself) that counts TokenReviews and SubjectAccessReviews.
func (f *kubeFixture) client(host string) kubernetes.Interface {
	cfg := rest.CopyConfig(f.env.Config)
	if host != "" {
		cfg.Host = host
	}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(r *http.Request) (*http.Response, error) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/tokenreviews"):
				f.reviews.Add(1)
			case strings.HasSuffix(r.URL.Path, "/subjectaccessreviews"):
				f.checks.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return cs
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// serviceAccount creates sa, allowed verbs on the given repositories of
// the registry, and returns a token for it with the audiences (none: the
// API server's own, as `kubectl create token` without --audience).
func (f *kubeFixture) serviceAccount(sa string, verbs []string, repos []string, audiences ...string) string {
	f.t.Helper()
	ctx := f.t.Context()
	c := f.env.Client
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: sa}}); err != nil {
		f.t.Fatal(err)
	}
	if len(verbs) > 0 {
		rule := rbacv1.PolicyRule{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"repositories"}, Verbs: verbs}
		for _, r := range repos {
			rule.ResourceNames = append(rule.ResourceNames, v1.RepositoryObjectName(registryName, r))
		}
		if err := c.Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: sa}, Rules: []rbacv1.PolicyRule{rule}}); err != nil {
			f.t.Fatal(err)
		}
		if err := c.Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: sa},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: sa},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: f.ns}},
		}); err != nil {
			f.t.Fatal(err)
		}
	}
	return f.token(sa, audiences...)
}

func (f *kubeFixture) token(sa string, audiences ...string) string {
	f.t.Helper()
	cs, err := kubernetes.NewForConfig(f.env.Config)
	if err != nil {
		f.t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(f.ns).CreateToken(f.t.Context(), sa,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return tr.Status.Token
}

func (f *kubeFixture) audience() string { return auth.DefaultAudience(f.ns, registryName) }

// guard returns a kubernetes-mode Guard for the fixture's namespace.
func (f *kubeFixture) guard(ko auth.KubernetesOptions, o auth.Options) *auth.Guard {
	f.t.Helper()
	if ko.TokenReviews == nil {
		cs := f.client("")
		ko.TokenReviews, ko.AccessReviews = cs.AuthenticationV1().TokenReviews(), cs.AuthorizationV1().SubjectAccessReviews()
	}
	ko.Namespace, ko.Registry = f.ns, registryName
	b, err := auth.NewKubernetes(ko)
	if err != nil {
		f.t.Fatal(err)
	}
	o.Mode, o.Backend, o.Secret = auth.Kubernetes, b, []byte("s")
	g, err := auth.New(o)
	if err != nil {
		f.t.Fatal(err)
	}
	return g
}

func basic(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://reg.example/v2/", nil)
	r.SetBasicAuth("anyone", token)
	return r
}

// TestKubernetesAsks: RBAC on the Repository object of the path, in the
// Registry's namespace, with the action as verb, decides.
func TestKubernetesAsks(t *testing.T) {
	f := newKubeFixture(t)
	token := f.serviceAccount("ci", []string{"pull"}, []string{"team/app"}, f.audience())
	g := f.guard(auth.KubernetesOptions{}, auth.Options{})
	tests := []struct {
		name   string
		token  string
		access auth.Access
		want   int
	}{
		{"pull the granted repository", token, auth.Access{Repository: "team/app", Action: auth.Pull}, 200},
		{"push is another verb", token, auth.Access{Repository: "team/app", Action: auth.Push}, 403},
		{"pull another repository", token, auth.Access{Repository: "team/other", Action: auth.Pull}, 403},
		{"the catalog", token, auth.Access{Action: auth.List}, 403},
		{"base needs a valid token only", token, auth.Access{}, 200},
		{"a forged token", token[:len(token)-4] + "AAAA", auth.Access{Repository: "team/app", Action: auth.Pull}, 401},
		{"garbage", "not-a-token", auth.Access{Repository: "team/app", Action: auth.Pull}, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := status(g.Authorize(t.Context(), basic(tc.token), tc.access)); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

// TestKubernetesAudience: by default a token must be issued for the
// Registry (DefaultAudience); a token for the API server itself, a full
// API credential, is refused. Configured audiences replace the default.
func TestKubernetesAudience(t *testing.T) {
	f := newKubeFixture(t)
	f.serviceAccount("ci", []string{"pull"}, []string{"team/app"})
	apiToken := f.token("ci") // the API server's own audience
	regToken := f.token("ci", f.audience())
	otherReg := f.token("ci", auth.DefaultAudience(f.ns, "other"))
	custom := f.token("ci", "ci.example/registry")
	pull := auth.Access{Repository: "team/app", Action: auth.Pull}
	tests := []struct {
		name      string
		audiences []string
		token     string
		want      int
	}{
		{"default: the registry's audience", nil, regToken, 200},
		{"default: an API-server token is refused", nil, apiToken, 401},
		{"default: another registry's token is refused", nil, otherReg, 401},
		{"configured: its audience", []string{"ci.example/registry"}, custom, 200},
		{"configured: the default no longer", []string{"ci.example/registry"}, regToken, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := f.guard(auth.KubernetesOptions{Audiences: tc.audiences}, auth.Options{})
			if got := status(g.Authorize(t.Context(), basic(tc.token), pull)); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
}

// TestKubernetesCachesABurst: a pull burst costs one TokenReview and one
// SubjectAccessReview per TTL, not one per request.
func TestKubernetesCachesABurst(t *testing.T) {
	f := newKubeFixture(t)
	token := f.serviceAccount("ci", []string{"pull"}, []string{"team/app"}, f.audience())
	const ttl = 2 * time.Second
	g := f.guard(auth.KubernetesOptions{CacheTTL: ttl}, auth.Options{})
	start := time.Now()
	for range 500 {
		if err := g.Authorize(t.Context(), basic(token), auth.Access{Repository: "team/app", Action: auth.Pull}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > ttl {
		t.Skipf("500 pulls took %v, longer than the TTL: machine too loaded to tell", d)
	}
	if f.reviews.Load() != 1 || f.checks.Load() != 1 {
		t.Fatalf("500 pulls cost %d TokenReviews and %d SubjectAccessReviews, want 1 and 1", f.reviews.Load(), f.checks.Load())
	}
	time.Sleep(ttl + 100*time.Millisecond)
	_ = g.Authorize(t.Context(), basic(token), auth.Access{Repository: "team/app", Action: auth.Pull})
	if f.reviews.Load() != 2 || f.checks.Load() != 2 {
		t.Fatalf("after the TTL: %d and %d, want the answers asked again", f.reviews.Load(), f.checks.Load())
	}
}

// TestKubernetesRejectedTokensApart: rejected tokens are cached apart from
// accepted ones: a flood of bad tokens, many more than the cache holds,
// does not evict a good token (its next request costs no TokenReview),
// and a bad token sent again costs none either.
func TestKubernetesRejectedTokensApart(t *testing.T) {
	f := newKubeFixture(t)
	token := f.serviceAccount("ci", []string{"pull"}, []string{"team/app"}, f.audience())
	// Throttling off: this is about the caches.
	g := f.guard(auth.KubernetesOptions{CacheTTL: time.Minute, CacheSize: 8}, auth.Options{Throttle: auth.ThrottleOptions{Disabled: true}})
	pull := auth.Access{Repository: "team/app", Action: auth.Pull}
	if err := g.Authorize(t.Context(), basic(token), pull); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if got := status(g.Authorize(t.Context(), basic(fmt.Sprintf("bad-token-%d", i)), pull)); got != 401 {
			t.Fatalf("bad token %d: status %d", i, got)
		}
	}
	before := f.reviews.Load()
	if err := g.Authorize(t.Context(), basic(token), pull); err != nil {
		t.Fatal(err)
	}
	if err := g.Authorize(t.Context(), basic("bad-token-39"), pull); status(err) != 401 {
		t.Fatalf("bad token again: %v", err)
	}
	if n := f.reviews.Load() - before; n != 0 {
		t.Fatalf("after 40 bad tokens, the good token and the last bad one again cost %d TokenReviews, want 0 (both cached)", n)
	}
}

// TestTokenScopeCap: a /token request asking for more accesses than the
// cap is refused before any SubjectAccessReview; one within it is served.
func TestTokenScopeCap(t *testing.T) {
	f := newKubeFixture(t)
	token := f.serviceAccount("ci", []string{"pull"}, []string{"team/app"}, f.audience())
	scopes := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("repository:team/app%d:pull", i))
		}
		return out
	}
	tests := []struct {
		name       string
		scopes     []string
		want       int
		wantChecks int32
	}{
		{"within the cap", scopes(8), 200, 8},
		{"duplicates count once", append(scopes(8), scopes(8)...), 200, 8},
		{"over the cap", scopes(9), 403, 0},
		{"far over the cap", scopes(1000), 403, 0},
		{"over the cap in one scope string", []string{strings.Join(scopes(20), "%20")}, 403, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := f.guard(auth.KubernetesOptions{}, auth.Options{MaxTokenScopes: 8}) // its caches empty
			before := f.checks.Load()
			if code, _ := getToken(t, g, "ci", token, tc.scopes...); code != tc.want {
				t.Fatalf("status %d, want %d", code, tc.want)
			}
			if n := f.checks.Load() - before; n != tc.wantChecks {
				t.Fatalf("%d SubjectAccessReviews, want %d", n, tc.wantChecks)
			}
		})
	}
}

// proxy forwards TCP to the API server; stopping it is an outage as
// registryd sees one (connections cut, then refused), and starting it
// again on the same address ends it.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, addr: "127.0.0.1:0", target: target}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) start() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
}

func (p *proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// TestKubernetesOutage: with the API server unreachable (after warm-up,
// registryd's connection to it is cut and refused), identities that pulled
// within the outage grace keep pulling; pushes, deletes and unknown tokens
// get 503 with Retry-After; once the grace has passed pulls get 503 too;
// nothing learnt during the outage is kept, and when the API server is back
// everything works again without a restart.
func TestKubernetesOutage(t *testing.T) {
	f := newKubeFixture(t)
	aud := f.audience()
	ci := f.serviceAccount("ci", []string{"pull", "push", "delete", "list"}, nil, aud)
	other := f.serviceAccount("other", []string{"pull"}, nil, aud)
	late := f.serviceAccount("late", []string{"pull"}, nil, aud)
	const ttl = 200 * time.Millisecond
	tests := []struct {
		name  string
		grace time.Duration
		// pause is how long the outage lasts before the checks.
		pause time.Duration
		// What the warmed-up identity gets during the outage.
		pull, base, list int
	}{
		{"within the grace", time.Minute, 2 * ttl, 200, 200, 200},
		{"past the grace", 3 * ttl, 4 * ttl, 503, 503, 503},
		{"grace off", -1, 2 * ttl, 503, 503, 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			api, err := url.Parse(f.env.Config.Host)
			if err != nil {
				t.Fatal(err)
			}
			p := newProxy(t, api.Host)
			outage := f.client("https://" + p.addr)
			g := f.guard(auth.KubernetesOptions{TokenReviews: outage.AuthenticationV1().TokenReviews(), AccessReviews: outage.AuthorizationV1().SubjectAccessReviews(), CacheTTL: ttl, OutageGrace: tc.grace}, auth.Options{})
			ctx := t.Context()
			pull, push, del := auth.Access{Repository: "team/app", Action: auth.Pull}, auth.Access{Repository: "team/app", Action: auth.Push}, auth.Access{Repository: "team/app", Action: auth.Delete}
			// Warm-up: ci pulls, lists and pushes; other pulls.
			for _, a := range []auth.Access{pull, {Action: auth.List}, push, del, {}} {
				if err := g.Authorize(ctx, basic(ci), a); err != nil {
					t.Fatalf("before the outage, %v: %v", a, err)
				}
			}
			if err := g.Authorize(ctx, basic(other), pull); err != nil {
				t.Fatal(err)
			}

			p.stop()
			time.Sleep(tc.pause) // every cached answer is stale now
			checks := []struct {
				what   string
				token  string
				access auth.Access
				want   int
			}{
				{"ci pulls", ci, pull, tc.pull},
				{"ci pulls again", ci, pull, tc.pull},
				{"ci asks for the base", ci, auth.Access{}, tc.base},
				{"ci lists", ci, auth.Access{Action: auth.List}, tc.list},
				{"ci pushes", ci, push, 503},
				{"ci deletes", ci, del, 503},
				{"other pulls", other, pull, tc.pull},
				{"other pulls a repository it never asked for", other, auth.Access{Repository: "team/new", Action: auth.Pull}, 503},
				{"a token never seen", late, pull, 503},
				{"garbage", "not-a-token", pull, 503},
			}
			for _, c := range checks {
				err := g.Authorize(ctx, basic(c.token), c.access)
				if got := status(err); got != c.want {
					t.Errorf("during the outage, %s: status %d (%v), want %d", c.what, got, err, c.want)
				}
				if e := errcode.As(err); err != nil && e.Code == errcode.Unavailable && e.RetryAfter == 0 {
					t.Errorf("during the outage, %s: 503 without Retry-After", c.what)
				}
			}

			p.start()
			deadline := time.Now().Add(10 * time.Second)
			for {
				err := g.Authorize(ctx, basic(ci), push)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the outage, push: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, c := range []struct {
				what   string
				token  string
				access auth.Access
				want   int
			}{
				{"ci deletes", ci, del, 200},
				{"a token never seen", late, pull, 200},
				{"other pulls a new repository", other, auth.Access{Repository: "team/new", Action: auth.Pull}, 200},
				{"garbage", "not-a-token", pull, 401},
			} {
				if got := status(g.Authorize(ctx, basic(c.token), c.access)); got != c.want {
					t.Errorf("after the outage, %s: status %d, want %d", c.what, got, c.want)
				}
			}
		})
	}
}

// status is the HTTP status the error would be answered with (200 for nil).
func status(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return errcode.As(err).Code.Status
}

// getToken asks the guard's /token for scopes with Basic credentials.
func getToken(t *testing.T, g *auth.Guard, user, pass string, scopes ...string) (int, string) {
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
	var resp struct {
		Token string `json:"token"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	return w.Code, resp.Token
}
