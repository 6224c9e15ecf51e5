// Package metricsauth guards the operator's metrics endpoint as the
// Kubernetes components guard theirs: the bearer token is checked with a
// TokenReview and `get` on the request path (nonResourceURLs /metrics)
// with a SubjectAccessReview.
//
// It replaces controller-runtime's filters.WithAuthenticationAndAuthorization,
// which answers a token the TokenReview refuses with 500 and an
// error-level log line with a stack trace (anyone who reaches the port can
// flood the log), and which pulls in k8s.io/apiserver. Here a refused token
// is 401, a refused permission 403, an API server that cannot answer 503,
// none of them logged above debug; answers are remembered for a short
// while, so a storm of one bad token costs the API server one review.
package metricsauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Options tune the filter.
type Options struct {
	// TTL is how long a decision (allowed, refused) is remembered per token
	// and path. Default 10 s.
	TTL time.Duration
	// MaxEntries bounds the decisions remembered. Default 1024.
	MaxEntries int
}

// FilterProvider returns a metricsserver.Options.FilterProvider with o.
func FilterProvider(o Options) func(*rest.Config, *http.Client) (metricsserver.Filter, error) {
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 1024
	}
	return func(cfg *rest.Config, hc *http.Client) (metricsserver.Filter, error) {
		cs, err := kubernetes.NewForConfigAndClient(cfg, hc)
		if err != nil {
			return nil, fmt.Errorf("metrics authentication: %w", err)
		}
		g := &guard{opts: o, cs: cs, seen: map[[32]byte]decision{}}
		return func(log logr.Logger, next http.Handler) (http.Handler, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				status, reason := g.decide(r.Context(), r)
				if status != http.StatusOK {
					log.V(1).Info("metrics request refused", "status", status, "reason", reason, "remote", r.RemoteAddr)
					http.Error(w, http.StatusText(status), status)
					return
				}
				next.ServeHTTP(w, r)
			}), nil
		}, nil
	}
}

type decision struct {
	status int
	reason string
	at     time.Time
}

type guard struct {
	opts Options
	cs   kubernetes.Interface
	mu   sync.Mutex
	seen map[[32]byte]decision
}

// decide answers 200, 401, 403 or 503 for r.
func (g *guard) decide(ctx context.Context, r *http.Request) (int, string) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return http.StatusUnauthorized, "no bearer token"
	}
	key := sha256.Sum256([]byte(r.URL.Path + "\x00" + token))
	g.mu.Lock()
	d, ok := g.seen[key]
	g.mu.Unlock()
	if ok && time.Since(d.at) < g.opts.TTL {
		return d.status, d.reason
	}
	d = g.review(ctx, token, r.URL.Path)
	if d.status == http.StatusServiceUnavailable {
		return d.status, d.reason // not remembered: the next request asks again
	}
	g.mu.Lock()
	if len(g.seen) >= g.opts.MaxEntries {
		for k, old := range g.seen {
			if time.Since(old.at) >= g.opts.TTL || len(g.seen) >= g.opts.MaxEntries {
				delete(g.seen, k)
			}
		}
	}
	g.seen[key] = d
	g.mu.Unlock()
	return d.status, d.reason
}

func (g *guard) review(ctx context.Context, token, path string) decision {
	now := time.Now()
	tr, err := g.cs.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return decision{http.StatusServiceUnavailable, "TokenReview: " + err.Error(), now}
	}
	if !tr.Status.Authenticated {
		return decision{http.StatusUnauthorized, "token not authenticated", now}
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := g.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
		NonResourceAttributes: &authzv1.NonResourceAttributes{Path: path, Verb: "get"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return decision{http.StatusServiceUnavailable, "SubjectAccessReview: " + err.Error(), now}
	}
	if !sar.Status.Allowed {
		return decision{http.StatusForbidden, u.Username + " may not get " + path, now}
	}
	return decision{http.StatusOK, "", now}
}
