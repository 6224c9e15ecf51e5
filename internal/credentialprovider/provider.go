// Package credentialprovider answers the kubelet's image credential provider
// exec protocol (credentialprovider.kubelet.k8s.io/v1) for Stevedore
// registries in auth mode kubernetes: the service-account token the kubelet
// mints for the pod being started (KEP-4412, tokenAttributes in the
// kubelet's CredentialProviderConfig) is handed back as the registry
// password, so registryd authorizes the pull by the pod's own ServiceAccount
// with TokenReview and SubjectAccessReview. No secret lives on the node or in
// the pod spec.
package credentialprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"
)

const (
	// Defaults of the plugin's flags.
	DefaultMaxCacheDuration = 10 * time.Minute
	DefaultExpiryMargin     = 5 * time.Minute
	// DefaultUsername is presented when the token names no subject; registryd
	// ignores the user name in auth mode kubernetes.
	DefaultUsername = "stevedore-credential-provider"
)

// maxRequestBytes bounds what is read from stdin: a request is an image
// reference and a token of a few KiB.
const maxRequestBytes = 1 << 20

const (
	requestKind  = "CredentialProviderRequest"
	responseKind = "CredentialProviderResponse"
)

var (
	// ErrMalformed: stdin is not a CredentialProviderRequest.
	ErrMalformed = errors.New("malformed CredentialProviderRequest")
	// ErrAPIVersion: the request is of another API version or kind than
	// credentialprovider.kubelet.k8s.io/v1 CredentialProviderRequest.
	ErrAPIVersion = errors.New("unsupported apiVersion or kind")
	// ErrNoToken: the kubelet passed no service-account token.
	ErrNoToken = errors.New("no serviceAccountToken in the request")
	// ErrImage: the image names no registry host.
	ErrImage = errors.New("image names no registry host")
)

// Options shape the answers.
type Options struct {
	// MaxCacheDuration caps how long the kubelet reuses an answer; zero:
	// never (the kubelet runs the plugin for every pull).
	MaxCacheDuration time.Duration
	// ExpiryMargin: the kubelet stops reusing an answer this long before
	// the token in it expires, so a pull that starts from the cache still
	// has a live token for its duration.
	ExpiryMargin time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Respond reads one request from r and returns the response that hands the
// request's token to the image's registry.
func Respond(r io.Reader, o Options) (*credentialproviderv1.CredentialProviderResponse, error) {
	o = o.withDefaults()
	b, err := io.ReadAll(io.LimitReader(r, maxRequestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request: %w", err)
	}
	if len(b) > maxRequestBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, maxRequestBytes)
	}
	var req credentialproviderv1.CredentialProviderRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	want := credentialproviderv1.SchemeGroupVersion.String()
	if req.APIVersion != want || req.Kind != requestKind {
		return nil, fmt.Errorf("%w: got apiVersion %q kind %q, want %s %s", ErrAPIVersion, req.APIVersion, req.Kind, want, requestKind)
	}
	if req.ServiceAccountToken == "" {
		return nil, fmt.Errorf("%w: set tokenAttributes (serviceAccountTokenAudience: the Registry's audience, requireServiceAccount: true, cacheType: Token) for this provider in the kubelet's --image-credential-provider-config", ErrNoToken)
	}
	host, err := registryHost(req.Image)
	if err != nil {
		return nil, err
	}
	claims := peek(req.ServiceAccountToken)
	username := DefaultUsername
	if ns, name, ok := serviceAccount(claims.Subject); ok {
		username = ns + "/" + name
	}
	return &credentialproviderv1.CredentialProviderResponse{
		TypeMeta: metav1.TypeMeta{APIVersion: want, Kind: responseKind},
		// The token is good for every repository of the registry (registryd
		// decides per repository), so one answer serves all its images.
		// The kubelet keys its cache by the token too (cacheType Token).
		CacheKeyType:  credentialproviderv1.RegistryPluginCacheKeyType,
		CacheDuration: &metav1.Duration{Duration: cacheDuration(claims, o)},
		Auth: map[string]credentialproviderv1.AuthConfig{
			host: {Username: username, Password: req.ServiceAccountToken},
		},
	}, nil
}

// cacheDuration: MaxCacheDuration, cut so the answer is dropped
// ExpiryMargin before the token expires; 0 (never cached) when the token
// carries no expiry or expires sooner than that.
func cacheDuration(c jwt.RegisteredClaims, o Options) time.Duration {
	if c.ExpiresAt == nil {
		return 0
	}
	left := c.ExpiresAt.Sub(o.Now()) - o.ExpiryMargin
	return max(0, min(o.MaxCacheDuration, left)).Truncate(time.Second)
}

// peek reads a token's claims without verifying it: only to name the
// subject (registryd's log shows it on a failed login) and bound the cache.
// registryd verifies the token with TokenReview; a token that is not a JWT
// is passed on as it is.
func peek(token string) jwt.RegisteredClaims {
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		return jwt.RegisteredClaims{}
	}
	return c
}

// serviceAccount splits a token subject system:serviceaccount:NS:NAME. The
// user name sent is NS/NAME: Basic credentials end the user name at the
// first colon, so system:serviceaccount:… would give registryd the user
// "system" and a password that is not the token.
func serviceAccount(sub string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(sub, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != "" && !strings.Contains(name, ":")
}

// registryHost is the host[:port] an image reference starts with, as the
// kubelet parses it; a first component without a dot or port that is not
// localhost is a Docker Hub path, never a Stevedore registry.
func registryHost(image string) (string, error) {
	host, _, ok := strings.Cut(image, "/")
	if !ok || host == "" || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return "", fmt.Errorf("%w: %q", ErrImage, image)
	}
	return host, nil
}

// Write encodes resp as the kubelet reads it.
func Write(w io.Writer, resp *credentialproviderv1.CredentialProviderResponse) error {
	return json.NewEncoder(w).Encode(resp)
}
