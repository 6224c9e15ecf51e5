package server

import (
	"errors"
	"net/http"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
)

// mirrorRoute maps a request onto the mirror: nil for the registry's own
// repositories. A ?ns= (containerd's upstream host) that no upstream
// answers to gets NAME_UNKNOWN, even without a mirror: the node then pulls
// from the upstream itself, and never gets the registry's own repository
// of the same name in place of the upstream's image.
func (s *server) mirrorRoute(r *http.Request, name string) (*mirror.Route, error) {
	ns := r.URL.Query().Get("ns")
	if s.opts.Mirror == nil {
		if ns != "" {
			return nil, errcode.NameUnknown.With("this registry mirrors no upstream (ns=" + ns + ")")
		}
		return nil, nil
	}
	rt, err := s.opts.Mirror.Route(ns, name)
	switch {
	case errors.Is(err, mirror.ErrNotMirrored):
		return nil, errcode.NameUnknown.Wrap(err, err.Error())
	case err != nil:
		return nil, errcode.NameInvalid.Wrap(err, name)
	}
	return rt, nil
}
