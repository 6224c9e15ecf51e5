package auth

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// DefaultAudience is the audience a Registry's tokens must be issued for
// when it names none: its own, so a token handed to registryd is neither
// an API-server credential nor valid at another Registry.
//
//	kubectl create token ci --audience stevedore.dev/registry/NAMESPACE/NAME
func DefaultAudience(namespace, registry string) string {
	return "stevedore.dev/registry/" + namespace + "/" + registry
}

// KubernetesOptions configure the kubernetes backend.
type KubernetesOptions struct {
	// TokenReviews and AccessReviews are a clientset's
	// AuthenticationV1().TokenReviews() and
	// AuthorizationV1().SubjectAccessReviews(): the two calls this mode
	// makes. Narrow on purpose: the package then does not depend on
	// client-go's clientset, every API group's types and clients (about 380
	// packages), which its fuzz target would build instrumented.
	TokenReviews  TokenReviewer
	AccessReviews AccessReviewer
	// Namespace and Registry locate the Repository objects that permissions
	// name (resourceName = the Repository object of a repository path).
	Namespace, Registry string
	// Audiences the token must be meant for (TokenReview spec.audiences).
	// Default: DefaultAudience(Namespace, Registry).
	Audiences []string
	// CacheTTL bounds how long a TokenReview or SubjectAccessReview answer
	// is reused: a revoked token or RoleBinding stops working after at most
	// this long. Default 10 s.
	CacheTTL time.Duration
	// CacheSize bounds each cache's entries (accepted tokens, rejected
	// tokens, decisions; least recently used dropped first). Default 4096.
	CacheSize int
	// OutageGrace: while the API server cannot answer, a token accepted and
	// a pull (or catalog) decision made within this long are still honoured,
	// so pulls go on through an outage; pushes and deletes get 503. The
	// trade-off: a token or RoleBinding revoked just before an outage keeps
	// pulling until the API server is back or this much time has passed.
	// Default 5 minutes; negative: off (every request needs the API server).
	OutageGrace time.Duration
	// ReviewTimeout bounds one TokenReview or SubjectAccessReview, so an
	// API server that does not answer costs a request this long at most.
	// Default 5 s.
	ReviewTimeout time.Duration
	Logger        *slog.Logger
}

// TokenReviewer creates TokenReviews (client-go's TokenReviewInterface has
// this method).
type TokenReviewer interface {
	Create(ctx context.Context, tr *authnv1.TokenReview, opts metav1.CreateOptions) (*authnv1.TokenReview, error)
}

// AccessReviewer creates SubjectAccessReviews (client-go's
// SubjectAccessReviewInterface has this method).
type AccessReviewer interface {
	Create(ctx context.Context, sar *authzv1.SubjectAccessReview, opts metav1.CreateOptions) (*authzv1.SubjectAccessReview, error)
}

// kubernetesBackend: the password (Basic) or token (Bearer) is a Kubernetes
// token; actions are verbs on repositories.stevedore.dev, so ServiceAccounts,
// users and groups with RBAC are the registry's identities and permissions.
type kubernetesBackend struct {
	opts KubernetesOptions
	log  *slog.Logger
	// Accepted and rejected tokens are cached apart, so a flood of bad
	// tokens never evicts a good one.
	identities *lruCache[*Identity]
	rejected   *lruCache[struct{}]
	decisions  *lruCache[bool]
	// retryAt (unix ns), when set, is when the API server, found down, is
	// asked again; until then answers come from the caches (one request
	// probes at a time, so an outage does not stall every request).
	retryAt atomic.Int64
}

// apiRetryInterval is how often an API server found down is probed.
const apiRetryInterval = time.Second

// NewKubernetes returns the kubernetes backend.
func NewKubernetes(o KubernetesOptions) (Backend, error) {
	if o.TokenReviews == nil || o.AccessReviews == nil || o.Namespace == "" || o.Registry == "" {
		return nil, fmt.Errorf("auth mode kubernetes needs a Kubernetes client, --namespace and --registry")
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{DefaultAudience(o.Namespace, o.Registry)}
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 10 * time.Second
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 4096
	}
	switch {
	case o.OutageGrace == 0:
		o.OutageGrace = 5 * time.Minute
	case o.OutageGrace < 0:
		o.OutageGrace = 0
	}
	if o.ReviewTimeout <= 0 {
		o.ReviewTimeout = 5 * time.Second
	}
	k := &kubernetesBackend{
		opts:       o,
		log:        o.Logger,
		identities: newLRUCache[*Identity](o.CacheTTL, o.OutageGrace, o.CacheSize),
		rejected:   newLRUCache[struct{}](o.CacheTTL, 0, o.CacheSize),
		decisions:  newLRUCache[bool](o.CacheTTL, o.OutageGrace, o.CacheSize),
	}
	if k.log == nil {
		k.log = slog.Default()
	}
	return k, nil
}

func (k *kubernetesBackend) cached(c Credentials) (*Identity, bool) {
	if c.Password == "" {
		return nil, false
	}
	return k.identities.get(cacheKey(c.Password))
}

func (k *kubernetesBackend) Authenticate(ctx context.Context, c Credentials) (*Identity, error) {
	token := c.Password
	if token == "" {
		return nil, ErrBadCredentials
	}
	key := cacheKey(token)
	id, fresh, known := k.identities.lookup(key)
	if fresh {
		return id, nil
	}
	if _, ok := k.rejected.get(key); ok {
		return nil, ErrBadCredentials
	}
	tr, err := k.tokenReview(ctx, token)
	if err != nil {
		if known { // accepted within OutageGrace
			return id, nil
		}
		return nil, err
	}
	if !tr.Status.Authenticated {
		k.identities.delete(key)
		k.rejected.set(key, struct{}{})
		return nil, ErrBadCredentials
	}
	u := tr.Status.User
	id = &Identity{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: map[string][]string{}}
	for k, v := range u.Extra {
		id.Extra[k] = v
	}
	k.identities.set(key, id)
	return id, nil
}

func (k *kubernetesBackend) tokenReview(ctx context.Context, token string) (*authnv1.TokenReview, error) {
	if !k.mayAsk() {
		return nil, fmt.Errorf("%w: the API server is not answering", ErrUnavailable)
	}
	rctx, cancel := context.WithTimeout(ctx, k.opts.ReviewTimeout)
	defer cancel()
	tr, err := k.opts.TokenReviews.Create(rctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: k.opts.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		// The error never carries the token: it is in the request body only.
		return nil, k.failed(ctx, fmt.Errorf("%w: TokenReview: %w", ErrUnavailable, err))
	}
	k.answered()
	return tr, nil
}

// readAction: what may go on from the caches during an outage.
func readAction(a Action) bool {
	return a == Pull || a == List || a == Authenticated
}

func (k *kubernetesBackend) Allowed(ctx context.Context, id *Identity, a Access) (bool, error) {
	if a.Action == Authenticated {
		return true, nil
	}
	attrs := &authzv1.ResourceAttributes{
		Namespace: k.opts.Namespace, Verb: string(a.Action),
		Group: v1.GroupVersion.Group, Resource: "repositories",
	}
	if a.Action != List {
		attrs.Name = v1.RepositoryObjectName(k.opts.Registry, a.Repository)
	}
	groups := slices.Clone(id.Groups)
	slices.Sort(groups)
	key := cacheKey(id.Name, id.UID, strings.Join(groups, "\x01"), attrs.Verb, attrs.Name)
	ok, fresh, known := k.decisions.lookup(key)
	if fresh {
		return ok, nil
	}
	allowed, err := k.subjectAccessReview(ctx, id, attrs)
	if err != nil {
		if known && readAction(a.Action) { // decided within OutageGrace
			return ok, nil
		}
		return false, err
	}
	k.decisions.set(key, allowed)
	return allowed, nil
}

func (k *kubernetesBackend) subjectAccessReview(ctx context.Context, id *Identity, attrs *authzv1.ResourceAttributes) (bool, error) {
	if !k.mayAsk() {
		return false, fmt.Errorf("%w: the API server is not answering", ErrUnavailable)
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range id.Extra {
		extra[k] = v
	}
	rctx, cancel := context.WithTimeout(ctx, k.opts.ReviewTimeout)
	defer cancel()
	sar, err := k.opts.AccessReviews.Create(rctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			ResourceAttributes: attrs, User: id.Name, UID: id.UID, Groups: id.Groups, Extra: extra,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, k.failed(ctx, fmt.Errorf("%w: SubjectAccessReview: %w", ErrUnavailable, err))
	}
	k.answered()
	return sar.Status.Allowed, nil
}

// mayAsk reports whether to call the API server now: always while it
// answers; once it failed, one caller per apiRetryInterval.
func (k *kubernetesBackend) mayAsk() bool {
	at := k.retryAt.Load()
	if at == 0 {
		return true
	}
	now := time.Now().UnixNano()
	return now >= at && k.retryAt.CompareAndSwap(at, now+int64(apiRetryInterval))
}

// failed marks the API server down and returns err; a request that was
// cancelled says nothing about the API server.
func (k *kubernetesBackend) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	if k.retryAt.Swap(time.Now().Add(apiRetryInterval).UnixNano()) == 0 {
		k.log.Warn("the API server is not answering: pulls confirmed recently go on from the caches, pushes and deletes get 503",
			"grace", k.opts.OutageGrace, "error", err)
	}
	return err
}

func (k *kubernetesBackend) answered() {
	if k.retryAt.Swap(0) != 0 {
		k.log.Info("the API server answers again")
	}
}
