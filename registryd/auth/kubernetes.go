package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// KubernetesOptions configure the kubernetes backend.
type KubernetesOptions struct {
	Client kubernetes.Interface
	// Namespace and Registry locate the Repository objects that permissions
	// name (resourceName = the Repository object of a repository path).
	Namespace, Registry string
	// Audiences the token must be meant for (TokenReview spec.audiences).
	// Empty: the API server's own audiences.
	Audiences []string
	// CacheTTL bounds how long a TokenReview or SubjectAccessReview answer
	// is reused: a revoked token or RoleBinding stops working after at most
	// this long. Default 10 s.
	CacheTTL time.Duration
	// CacheSize bounds each cache's entries. Default 4096.
	CacheSize int
}

// kubernetesBackend: the password (Basic) or token (Bearer) is a Kubernetes
// token; actions are verbs on repositories.stevedore.dev, so ServiceAccounts,
// users and groups with RBAC are the registry's identities and permissions.
type kubernetesBackend struct {
	opts       KubernetesOptions
	identities *ttlCache[*Identity] // nil: the token was refused
	decisions  *ttlCache[bool]
}

// NewKubernetes returns the kubernetes backend.
func NewKubernetes(o KubernetesOptions) (Backend, error) {
	if o.Client == nil || o.Namespace == "" || o.Registry == "" {
		return nil, fmt.Errorf("auth mode kubernetes needs a Kubernetes client, --namespace and --registry")
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 10 * time.Second
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 4096
	}
	return &kubernetesBackend{
		opts:       o,
		identities: newTTLCache[*Identity](o.CacheTTL, o.CacheSize),
		decisions:  newTTLCache[bool](o.CacheTTL, o.CacheSize),
	}, nil
}

func (k *kubernetesBackend) Authenticate(ctx context.Context, c Credentials) (*Identity, error) {
	token := c.Password
	if token == "" {
		return nil, ErrBadCredentials
	}
	key := cacheKey(token)
	if id, ok := k.identities.get(key); ok {
		if id == nil {
			return nil, ErrBadCredentials
		}
		return id, nil
	}
	tr, err := k.opts.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: k.opts.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		// The error never carries the token: it is in the request body only.
		return nil, fmt.Errorf("%w: TokenReview: %w", ErrUnavailable, err)
	}
	if !tr.Status.Authenticated {
		k.identities.set(key, nil)
		return nil, ErrBadCredentials
	}
	u := tr.Status.User
	id := &Identity{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: map[string][]string{}}
	for k, v := range u.Extra {
		id.Extra[k] = v
	}
	k.identities.set(key, id)
	return id, nil
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
	if ok, hit := k.decisions.get(key); hit {
		return ok, nil
	}
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range id.Extra {
		extra[k] = v
	}
	sar, err := k.opts.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			ResourceAttributes: attrs, User: id.Name, UID: id.UID, Groups: id.Groups, Extra: extra,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("%w: SubjectAccessReview: %w", ErrUnavailable, err)
	}
	k.decisions.set(key, sar.Status.Allowed)
	return sar.Status.Allowed, nil
}
