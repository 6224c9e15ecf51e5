package auth

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// Challenge is the WWW-Authenticate scheme a Guard answers 401 with.
type Challenge string

const (
	// ChallengeBasic asks for a user and password on every request; every
	// client follows it, and it is the default.
	ChallengeBasic Challenge = "basic"
	// ChallengeBearer sends clients to /token first (the Docker token flow),
	// for clients that insist on Bearer; later requests carry a signed token
	// and cost no password check.
	ChallengeBearer Challenge = "bearer"
)

// ParseChallenge validates a --auth-challenge value.
func ParseChallenge(s string) (Challenge, error) {
	switch c := Challenge(s); c {
	case ChallengeBasic, ChallengeBearer:
		return c, nil
	}
	return "", fmt.Errorf("auth challenge %q: want basic or bearer", s)
}

// Options configure a Guard.
type Options struct {
	Mode Mode
	// Backend checks credentials and permissions; nil only in mode none.
	Backend Backend
	// AnonymousPull lets requests without credentials pull (never push,
	// delete or list).
	AnonymousPull bool
	// Service names the registry in challenges and in the tokens it issues.
	// Default "stevedore".
	Service string
	// Challenge defaults to ChallengeBasic.
	Challenge Challenge
	// TokenRealm is the /token URL put in Bearer challenges. Default: /token
	// on the scheme and host the request came in on.
	TokenRealm string
	// Secret signs the tokens /token issues; every replica needs the same.
	Secret []byte
	// TokenTTL is how long an issued token is valid. Default 5 minutes.
	TokenTTL time.Duration
	// Registerer receives the failure counter. Nil: not exported.
	Registerer prometheus.Registerer
	// Logger receives one line per refused attempt (never a secret).
	Logger *slog.Logger
	// Throttle bounds failed logins per client; see ThrottleOptions.
	Throttle ThrottleOptions
	// MaxTokenScopes caps the accesses one /token request may ask about
	// (each may cost a SubjectAccessReview). Default 16.
	MaxTokenScopes int
}

// Guard answers whether a request may perform an access.
type Guard struct {
	opts     Options
	tokens   *tokenSigner
	throttle *throttle
	failures *prometheus.CounterVec
	issued   prometheus.Counter
	log      *slog.Logger
}

// Reasons counted in registryd_auth_failures_total.
const (
	failureInvalid   = "invalid_credentials"
	failureDenied    = "denied"
	failureThrottled = "throttled"
)

// New returns a Guard for o.
func New(o Options) (*Guard, error) {
	if o.Mode != None && o.Backend == nil {
		return nil, fmt.Errorf("auth mode %s needs a backend", o.Mode)
	}
	if o.Service == "" {
		o.Service = "stevedore"
	}
	if o.Challenge == "" {
		o.Challenge = ChallengeBasic
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = 5 * time.Minute
	}
	if len(o.Secret) == 0 {
		return nil, errors.New("auth: a secret is needed to sign tokens")
	}
	if o.MaxTokenScopes <= 0 {
		o.MaxTokenScopes = 16
	}
	g := &Guard{opts: o, tokens: newTokenSigner(o.Secret, o.Service), throttle: newThrottle(o.Throttle), log: o.Logger}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "registryd_auth_failures_total",
		Help: "Requests refused for wrong credentials (invalid_credentials), missing permission (denied) or too many failed logins (throttled).",
	}, []string{"reason"})
	g.issued = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "registryd_auth_tokens_issued_total", Help: "Tokens issued by /token.",
	})
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{g.failures, g.issued} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// Authorize returns nil when r may perform a, else the spec error to send.
func (g *Guard) Authorize(ctx context.Context, r *http.Request, a Access) error {
	if g.opts.Mode == None {
		return nil
	}
	creds, ok := credentials(r)
	if !ok {
		if g.anonymousMay(a) {
			setUser(ctx, anonymous)
			return nil
		}
		return g.challenge(r, "", a)
	}
	if creds.Bearer {
		// One of our tokens: verified once, which is all a valid one costs.
		// One that fails but claims to be ours is bad; anything else may
		// be the backend's (a Kubernetes token).
		if claims, err := g.tokens.verify(creds.Password); err == nil {
			setUser(ctx, cmp.Or(claims.Subject, anonymous))
			return g.authorizeClaims(ctx, r, claims, a)
		} else if g.tokens.ours(creds.Password) {
			g.failures.WithLabelValues(failureInvalid).Inc()
			return g.challenge(r, "invalid_token", a)
		}
	}
	id, err := g.authenticate(ctx, r, creds)
	if err != nil {
		return g.refuse(r, a, err)
	}
	setUser(ctx, id.Name)
	if a.Action == Authenticated {
		return nil
	}
	allowed, err := g.opts.Backend.Allowed(ctx, id, a)
	if err != nil {
		return unavailable(err)
	}
	if !allowed && !g.anonymousMay(a) {
		g.failures.WithLabelValues(failureDenied).Inc()
		g.log.InfoContext(ctx, "access denied", "user", id.Name, "access", a.String())
		return errcode.Denied.With(a.String())
	}
	return nil
}

func (g *Guard) anonymousMay(a Access) bool {
	return g.opts.AnonymousPull && a.Action == Pull
}

// authorizeClaims checks a request carrying a token /token issued: its grants
// are the decision made when it was issued.
func (g *Guard) authorizeClaims(ctx context.Context, r *http.Request, claims *tokenClaims, a Access) error {
	switch {
	case claims.grants(a), g.anonymousMay(a):
		// A cross-repository mount also reads the source; a token that
		// says nothing of it is sent back for one that does, or the mount
		// would quietly become a full upload.
		if src, ok := mountSource(r, a); ok && !claims.grants(src) && !claims.denies(src) && !g.anonymousMay(src) {
			return g.challenge(r, "insufficient_scope", a, src)
		}
		return nil
	case claims.denies(a):
		g.failures.WithLabelValues(failureDenied).Inc()
		g.log.InfoContext(ctx, "access denied", "user", claims.Subject, "access", a.String())
		return errcode.Denied.With(a.String())
	}
	// A token for other scopes: the client fetches one for this scope.
	return g.challenge(r, "insufficient_scope", a)
}

// mountSource is the repository a blob mount (POST …/uploads/?mount=&from=)
// reads from.
func mountSource(r *http.Request, a Access) (Access, bool) {
	q := r.URL.Query()
	from := q.Get("from")
	if a.Action != Push || r.Method != http.MethodPost || !q.Has("mount") || from == "" || from == a.Repository {
		return Access{}, false
	}
	return Access{Repository: from, Action: Pull}, true
}

// cachedAuthenticator is a Backend that can tell, at no cost, that it has
// recently verified credentials: those logins skip the throttle, so a
// logged-in client keeps working while its address is throttled.
type cachedAuthenticator interface {
	cached(c Credentials) (*Identity, bool)
}

// errThrottled: the client made too many failed logins; its credentials
// were not checked.
type errThrottled struct{ wait time.Duration }

func (e *errThrottled) Error() string {
	return fmt.Sprintf("too many failed logins: retry in %v", e.wait.Round(time.Second))
}

func (g *Guard) authenticate(ctx context.Context, r *http.Request, c Credentials) (*Identity, error) {
	if cb, ok := g.opts.Backend.(cachedAuthenticator); ok {
		if id, ok := cb.cached(c); ok {
			return id, nil
		}
	}
	release, wait := g.throttle.take(r, c.Username)
	if wait > 0 {
		// No log line: a storm would be one per request. The counter shows it.
		g.failures.WithLabelValues(failureThrottled).Inc()
		return nil, &errThrottled{wait: wait}
	}
	id, err := g.opts.Backend.Authenticate(ctx, c)
	if errors.Is(err, ErrBadCredentials) {
		g.failures.WithLabelValues(failureInvalid).Inc()
		// The user name is not a secret; the password or token is never logged.
		g.log.InfoContext(ctx, "authentication failed", "user", c.Username, "bearer", c.Bearer, "remote", r.RemoteAddr)
		return nil, err
	}
	release() // a success, or an outage that is not the client's fault
	return id, err
}

// refuse turns an authentication error into 401 (bad credentials), 429
// (throttled) or 503.
func (g *Guard) refuse(r *http.Request, a Access, err error) error {
	var te *errThrottled
	switch {
	case errors.Is(err, ErrBadCredentials):
		return g.challenge(r, "invalid_token", a)
	case errors.As(err, &te):
		return &errcode.Error{Code: errcode.TooManyRequests, RetryAfter: retryAfter(te.wait), Err: err}
	}
	return unavailable(err)
}

func unavailable(err error) error {
	return &errcode.Error{Code: errcode.Unavailable, RetryAfter: 1, Err: err}
}

// challenge is the 401 asking for credentials for the accesses. It never
// says whether a user exists or which part of the credentials was wrong.
func (g *Guard) challenge(r *http.Request, bearerError string, as ...Access) error {
	h := http.Header{}
	h.Set("WWW-Authenticate", g.challengeHeader(r, bearerError, as))
	return &errcode.Error{Code: errcode.Unauthorized, Detail: as[0].String(), Header: h}
}

func (g *Guard) challengeHeader(r *http.Request, bearerError string, as []Access) string {
	if g.opts.Challenge != ChallengeBearer {
		return fmt.Sprintf("Basic realm=%q", g.opts.Service)
	}
	v := fmt.Sprintf("Bearer realm=%q,service=%q", g.tokenRealm(r), g.opts.Service)
	var scopes []string
	for _, a := range as {
		if s := a.Scope(); s != "" {
			scopes = append(scopes, s)
		}
	}
	if len(scopes) > 0 {
		v += fmt.Sprintf(",scope=%q", strings.Join(scopes, " "))
		if bearerError != "" {
			v += fmt.Sprintf(",error=%q", bearerError)
		}
	}
	return v
}

// tokenRealm is where clients fetch tokens: the configured URL, else /token
// on the scheme and host the client used (behind a proxy, as it forwarded).
func (g *Guard) tokenRealm(r *http.Request) string {
	if g.opts.TokenRealm != "" {
		return g.opts.TokenRealm
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
		scheme = p
	}
	host := r.Host
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		host = h
	}
	return scheme + "://" + host + "/token"
}

// credentials reads the Authorization header.
func credentials(r *http.Request) (Credentials, bool) {
	h := r.Header.Get("Authorization")
	scheme, value, ok := strings.Cut(h, " ")
	if !ok {
		return Credentials{}, false
	}
	value = strings.TrimSpace(value)
	switch strings.ToLower(scheme) {
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return Credentials{Username: "", Password: ""}, true // present but unreadable: bad, not anonymous
		}
		user, pass, _ := strings.Cut(string(raw), ":")
		// Some clients (skopeo --no-creds) send an empty pair: no credentials.
		return Credentials{Username: user, Password: pass}, user != "" || pass != ""
	case "bearer":
		return Credentials{Password: value, Bearer: true}, true
	}
	return Credentials{}, true
}
