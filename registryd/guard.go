package main

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stevedore-dev/stevedore/registryd/auth"
)

// newGuard builds the access rules of --auth and its flags.
func newGuard(log *slog.Logger, c config, secret []byte, reg prometheus.Registerer, kc *kubeConn) (*auth.Guard, error) {
	mode, err := auth.ParseMode(c.authMode)
	if err != nil {
		return nil, err
	}
	challenge, err := auth.ParseChallenge(c.authChallenge)
	if err != nil {
		return nil, err
	}
	var backend auth.Backend
	switch mode {
	case auth.None:
		log.Warn("AUTH DISABLED (--auth none): anyone who can reach this registry can push and delete; development only")
	case auth.Htpasswd:
		if c.htpasswdFile == "" {
			return nil, errors.New("--auth htpasswd needs --htpasswd-file")
		}
		backend, err = auth.NewHtpasswd(auth.HtpasswdOptions{File: c.htpasswdFile, ReadOnlyFile: c.htpasswdReadOnlyFile, Logger: log})
	case auth.Kubernetes:
		backend, err = newKubernetesBackend(log, c, kc)
	}
	if err != nil {
		return nil, err
	}
	if c.anonymousPull && mode != auth.None {
		log.Info("anonymous pull is on: anyone who can reach this registry can pull")
	}
	return auth.New(auth.Options{
		Mode: mode, Backend: backend, AnonymousPull: c.anonymousPull, Challenge: challenge,
		TokenRealm: c.tokenRealm, Secret: secret, Registerer: reg, Logger: log,
		MaxTokenScopes: c.tokenMaxScopes, Throttle: auth.ThrottleOptions{Disabled: !c.loginThrottle},
	})
}

func newKubernetesBackend(log *slog.Logger, c config, kc *kubeConn) (auth.Backend, error) {
	var opts auth.KubernetesOptions // no reviewers without --registry: NewKubernetes says what is missing
	if kc != nil {
		opts.TokenReviews, opts.AccessReviews = kc.cs.AuthenticationV1().TokenReviews(), kc.cs.AuthorizationV1().SubjectAccessReviews()
	}
	var audiences []string
	for _, a := range strings.Split(c.tokenAudiences, ",") {
		if a = strings.TrimSpace(a); a != "" {
			audiences = append(audiences, a)
		}
	}
	grace := c.authOutageGrace
	if grace == 0 {
		grace = -1 // the flag's 0 is off; the option's 0 is the default
	}
	opts.Namespace, opts.Registry, opts.Audiences = c.namespace, c.registry, audiences
	opts.CacheTTL, opts.OutageGrace, opts.Logger = c.authCacheTTL, grace, log
	return auth.NewKubernetes(opts)
}

// withTokenEndpoint serves /token (the Docker token flow) beside the
// registry API. Not a ServeMux: it would clean and redirect paths such as
// /v2/../x that the API must refuse with NAME_INVALID.
func withTokenEndpoint(api, token http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			token.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}
