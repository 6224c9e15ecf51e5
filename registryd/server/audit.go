package server

import (
	"net/http"

	"github.com/stevedore-dev/stevedore/registryd/auth"
)

// writeMethods are the methods that change a repository, each audited.
var writeMethods = map[string]bool{
	http.MethodPut: true, http.MethodPost: true, http.MethodPatch: true, http.MethodDelete: true,
}

// audit logs one "audit" line per write request, allowed or not: who
// (the identity the auth guard let in, never a credential), the action,
// the repository, the reference (tag or digest) asked for, the digest
// stored, and the status. Upload ids and state are capabilities: not logged.
func (s *server) audit(r *http.Request, w http.ResponseWriter, status int) {
	if !writeMethods[r.Method] {
		return
	}
	ep, p := parsePath(r.URL.Path)
	rt := s.routes[routeKey{ep, r.Method}]
	ref := ""
	switch ep {
	case epManifest, epBlob:
		ref = p.arg
	case epUploadStart, epUpload:
		q := r.URL.Query()
		ref = q.Get("digest")
		if m := q.Get("mount"); m != "" {
			ref = m
		}
	}
	s.log.InfoContext(r.Context(), "audit",
		"user", auth.UserFrom(r.Context()), "action", string(rt.action), "method", r.Method, "route", rt.name,
		"repository", p.name, "reference", ref, "digest", w.Header().Get("Docker-Content-Digest"), "status", status)
}
