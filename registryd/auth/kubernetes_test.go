package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// fakeAPI answers TokenReviews and SubjectAccessReviews in memory and
// counts them; the real API server is exercised in registryd/e2e.
type fakeAPI struct {
	reviews, checks atomic.Int32
	down            atomic.Bool
	allowed         func(*authzv1.ResourceAttributes) bool
}

func (f *fakeAPI) client() *fake.Clientset {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		f.reviews.Add(1)
		if f.down.Load() {
			return true, nil, errors.New("connection refused")
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if tr.Spec.Token == "good-token" {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:team:ci", Groups: []string{"system:serviceaccounts"}}}
		}
		return true, tr, nil
	})
	cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		f.checks.Add(1)
		if f.down.Load() {
			return true, nil, errors.New("connection refused")
		}
		sar := a.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview)
		sar.Status.Allowed = f.allowed(sar.Spec.ResourceAttributes)
		return true, sar, nil
	})
	return cs
}

func newKubeGuard(t *testing.T, f *fakeAPI, ttl time.Duration) *Guard {
	t.Helper()
	b, err := NewKubernetes(KubernetesOptions{Client: f.client(), Namespace: "team", Registry: "main", CacheTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Mode: Kubernetes, Backend: b, Secret: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func basic(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://reg.example/v2/", nil)
	r.SetBasicAuth("anyone", token)
	return r
}

// TestKubernetesAsks: the SubjectAccessReview names the Repository object
// of the path, in the Registry's namespace, with the action as verb.
func TestKubernetesAsks(t *testing.T) {
	var seen []authzv1.ResourceAttributes
	f := &fakeAPI{allowed: func(a *authzv1.ResourceAttributes) bool { seen = append(seen, *a); return a.Verb == "pull" }}
	g := newKubeGuard(t, f, time.Minute)
	ctx := context.Background()
	if err := g.Authorize(ctx, basic("good-token"), Access{"team/app", Pull}); err != nil {
		t.Fatal(err)
	}
	if got := status(g.Authorize(ctx, basic("good-token"), Access{"team/app", Push})); got != 403 {
		t.Fatalf("push: %d, want 403", got)
	}
	if got := status(g.Authorize(ctx, basic("bad-token"), Access{"team/app", Pull})); got != 401 {
		t.Fatalf("bad token: %d, want 401", got)
	}
	_ = g.Authorize(ctx, basic("good-token"), Access{Action: List})
	want := authzv1.ResourceAttributes{Namespace: "team", Verb: "pull", Group: "stevedore.dev", Resource: "repositories", Name: v1.RepositoryObjectName("main", "team/app")}
	if len(seen) != 3 || seen[0] != want || seen[1].Verb != "push" || seen[2].Verb != "list" || seen[2].Name != "" {
		t.Fatalf("reviews %+v, first want %+v", seen, want)
	}
}

// TestKubernetesCachesABurst: a pull burst costs one TokenReview and one
// SubjectAccessReview per TTL, not one per request.
func TestKubernetesCachesABurst(t *testing.T) {
	f := &fakeAPI{allowed: func(*authzv1.ResourceAttributes) bool { return true }}
	g := newKubeGuard(t, f, 200*time.Millisecond)
	for range 500 {
		if err := g.Authorize(context.Background(), basic("good-token"), Access{"team/app", Pull}); err != nil {
			t.Fatal(err)
		}
	}
	if f.reviews.Load() != 1 || f.checks.Load() != 1 {
		t.Fatalf("500 pulls cost %d TokenReviews and %d SubjectAccessReviews, want 1 and 1", f.reviews.Load(), f.checks.Load())
	}
	time.Sleep(250 * time.Millisecond)
	_ = g.Authorize(context.Background(), basic("good-token"), Access{"team/app", Pull})
	if f.reviews.Load() != 2 || f.checks.Load() != 2 {
		t.Fatalf("after the TTL: %d and %d, want the answers asked again", f.reviews.Load(), f.checks.Load())
	}
}

// TestKubernetesOutage: an API server that cannot answer is 503 with
// Retry-After, never 401 (the client's credentials may be fine).
func TestKubernetesOutage(t *testing.T) {
	f := &fakeAPI{allowed: func(*authzv1.ResourceAttributes) bool { return true }}
	f.down.Store(true)
	g := newKubeGuard(t, f, time.Minute)
	err := g.Authorize(context.Background(), basic("good-token"), Access{"team/app", Pull})
	if e := errcode.As(err); e.Code != errcode.Unavailable || e.RetryAfter == 0 {
		t.Fatalf("during the outage: %v, want 503 UNAVAILABLE with Retry-After", err)
	}
	f.down.Store(false)
	if err := g.Authorize(context.Background(), basic("good-token"), Access{"team/app", Pull}); err != nil {
		t.Fatalf("after the outage: %v (failures must not be cached)", err)
	}
}
