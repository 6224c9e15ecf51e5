// Package auth guards registryd's API by the Registry's auth mode.
//
// Mode none lets everyone in. Credential checks for htpasswd and kubernetes
// (issue 8) are not built yet, so in those modes registryd fails closed:
// nobody can authenticate, every request is answered 401 UNAUTHORIZED with a
// Basic challenge, except pulls when anonymous pull is on. A Registry left
// at the default mode is therefore never open to anonymous push.
package auth

import (
	"fmt"
	"net/http"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// Mode is a Registry's auth mode.
type Mode string

const (
	None       Mode = "none"
	Htpasswd   Mode = "htpasswd"
	Kubernetes Mode = "kubernetes"
)

// ParseMode validates a --auth value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case None, Htpasswd, Kubernetes:
		return m, nil
	}
	return "", fmt.Errorf("auth mode %q: want none, htpasswd or kubernetes", s)
}

// Options configure Middleware.
type Options struct {
	Mode Mode
	// AnonymousPull lets unauthenticated GET and HEAD requests through.
	AnonymousPull bool
	// Realm names the registry in the challenge.
	Realm string
}

// Middleware wraps the registry API with the mode's access rules.
func Middleware(next http.Handler, o Options) http.Handler {
	if o.Mode == None {
		return next
	}
	challenge := fmt.Sprintf("Basic realm=%q", o.Realm)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.AnonymousPull && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", challenge)
		errcode.Write(w, r, errcode.Unauthorized.With(fmt.Sprintf(
			"auth mode %s: credential checks are not available in this version, so only %s", o.Mode, allowed(o))))
	})
}

func allowed(o Options) string {
	if o.AnonymousPull {
		return "anonymous pulls are served"
	}
	return "nothing is served; use auth mode none for an open development registry"
}
