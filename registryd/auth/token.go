package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// tokenIssuer marks the tokens registryd signs, so a Bearer token can be
// told apart from a Kubernetes token without trying both.
const tokenIssuer = "stevedore-registryd"

// tokenAccess is one grant, in the Docker token format.
type tokenAccess struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// tokenClaims: what was granted, and what was asked for and refused (so a
// request outside the grant is told 403 rather than sent back for a token).
type tokenClaims struct {
	jwt.RegisteredClaims
	Access []tokenAccess `json:"access,omitempty"`
	Denied []tokenAccess `json:"denied,omitempty"`
}

func (c *tokenClaims) grants(a Access) bool {
	if a.Action == Authenticated {
		return c.Subject != ""
	}
	return covers(c.Access, a)
}

func (c *tokenClaims) denies(a Access) bool { return covers(c.Denied, a) }

func covers(list []tokenAccess, a Access) bool {
	typ, name := "repository", a.Repository
	if a.Action == List {
		typ, name = "registry", "catalog"
	}
	for _, t := range list {
		if t.Type == typ && t.Name == name && (slices.Contains(t.Actions, string(a.Action)) || slices.Contains(t.Actions, "*")) {
			return true
		}
	}
	return false
}

// toTokenAccess groups accesses by resource, in the order first seen.
func toTokenAccess(as []Access) []tokenAccess {
	var out []tokenAccess
	for _, a := range as {
		typ, name, act := "repository", a.Repository, string(a.Action)
		if a.Action == List {
			typ, name, act = "registry", "catalog", "*"
		}
		i := slices.IndexFunc(out, func(t tokenAccess) bool { return t.Type == typ && t.Name == name })
		if i < 0 {
			out = append(out, tokenAccess{Type: typ, Name: name})
			i = len(out) - 1
		}
		if !slices.Contains(out[i].Actions, act) {
			out[i].Actions = append(out[i].Actions, act)
		}
	}
	return out
}

// tokenSigner signs and verifies registryd's tokens (HS256). Its key is
// derived from the HTTP secret, so every replica accepts every replica's
// tokens, and upload state and tokens never share a key.
type tokenSigner struct {
	key     []byte
	service string
	parser  *jwt.Parser
}

func newTokenSigner(secret []byte, service string) *tokenSigner {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("stevedore auth token v1"))
	return &tokenSigner{key: mac.Sum(nil), service: service, parser: jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer), jwt.WithAudience(service),
		jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second))}
}

// ours reports whether token claims to be one of registryd's (unverified).
func (s *tokenSigner) ours(token string) bool {
	var c jwt.RegisteredClaims
	_, _, err := jwt.NewParser().ParseUnverified(token, &c)
	return err == nil && c.Issuer == tokenIssuer
}

func (s *tokenSigner) sign(c *tokenClaims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(s.key)
}

func (s *tokenSigner) verify(token string) (*tokenClaims, error) {
	var c tokenClaims
	if _, err := s.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return s.key, nil }); err != nil {
		return nil, err
	}
	return &c, nil
}

// tokenResponse is the body of a /token answer; token and access_token
// carry the same value for old and new clients.
type tokenResponse struct {
	Token       string `json:"token,omitempty"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// TokenHandler serves /token: GET with Basic credentials (Docker token
// flow) or POST with an OAuth2 password grant (containerd), each scope
// decided now by the mode's backend. Without credentials it issues an
// anonymous token when anonymous pull grants something, else asks for them.
func (g *Guard) TokenHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.serveToken(w, r); err != nil {
			errcode.Write(w, r, err)
		}
	})
}

func (g *Guard) serveToken(w http.ResponseWriter, r *http.Request) error {
	var (
		creds Credentials
		ok    bool
		query = r.URL.Query()
	)
	switch r.Method {
	case http.MethodGet:
		creds, ok = credentials(r)
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			return errcode.Unsupported.With("token request: " + err.Error())
		}
		query = r.PostForm
		if gt := query.Get("grant_type"); gt != "password" {
			return errcode.Unsupported.With("grant_type " + gt + ": only password is supported")
		}
		creds, ok = Credentials{Username: query.Get("username"), Password: query.Get("password")}, true
	default:
		return errcode.Unsupported.With("method " + r.Method)
	}
	var requested []Access
	for _, s := range query["scope"] {
		for _, f := range strings.Fields(s) {
			as, err := parseScope(f)
			if err != nil {
				return errcode.Unsupported.With(err.Error())
			}
			for _, a := range as {
				if !slices.Contains(requested, a) {
					requested = append(requested, a)
				}
			}
			// Each access may cost a SubjectAccessReview: refused before
			// any is asked, or one request could ask thousands.
			if len(requested) > g.opts.MaxTokenScopes {
				return errcode.Denied.With(fmt.Sprintf("a token request may ask for %d accesses at most", g.opts.MaxTokenScopes))
			}
		}
	}
	if g.opts.Mode == None {
		return g.writeToken(w, r, "anonymous", requested, nil)
	}
	var id *Identity
	if ok {
		var err error
		if id, err = g.authenticate(r.Context(), r, creds); err != nil {
			return g.refuse(r, Access{}, err)
		}
	}
	granted, denied, err := g.decide(r, id, requested)
	if err != nil {
		return unavailable(err)
	}
	if id == nil && len(granted) == 0 {
		return g.challenge(r, "", Access{})
	}
	subject := ""
	if id != nil {
		subject = id.Name
	}
	return g.writeToken(w, r, subject, granted, denied)
}

// decide splits the requested accesses into granted and denied.
func (g *Guard) decide(r *http.Request, id *Identity, requested []Access) (granted, denied []Access, err error) {
	for _, a := range requested {
		ok := g.anonymousMay(a)
		if !ok && id != nil {
			if ok, err = g.opts.Backend.Allowed(r.Context(), id, a); err != nil {
				return nil, nil, err
			}
		}
		if ok {
			granted = append(granted, a)
		} else {
			denied = append(denied, a)
		}
	}
	return granted, denied, nil
}

func (g *Guard) writeToken(w http.ResponseWriter, r *http.Request, subject string, granted, denied []Access) error {
	now := time.Now()
	token, err := g.tokens.sign(&tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: subject, Audience: jwt.ClaimStrings{g.opts.Service},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
			ExpiresAt: jwt.NewNumericDate(now.Add(g.opts.TokenTTL)),
		},
		Access: toTokenAccess(granted), Denied: toTokenAccess(denied),
	})
	if err != nil {
		return fmt.Errorf("signing a token: %w", err)
	}
	resp := tokenResponse{AccessToken: token, ExpiresIn: int(g.opts.TokenTTL.Seconds()), IssuedAt: now.UTC().Format(time.RFC3339)}
	if r.Method == http.MethodGet {
		resp.Token = token
	}
	g.issued.Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(resp)
}
