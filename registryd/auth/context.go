package auth

import (
	"context"
	"sync/atomic"
)

// The identity a Guard let in travels to the server's request and audit
// log lines through the request's context: the server installs an empty
// slot before asking the Guard (WithIdentitySlot), the Guard fills it, and
// the log reads it back (UserFrom) once the handler has run.

type identitySlotKey struct{}

// identitySlot is set at most once per request, read after the handler.
type identitySlot struct{ name atomic.Pointer[string] }

// WithIdentitySlot returns ctx with room for the identity of its request.
func WithIdentitySlot(ctx context.Context) context.Context {
	return context.WithValue(ctx, identitySlotKey{}, &identitySlot{})
}

// UserFrom returns the name of the identity the Guard let in for the
// request of ctx: a user name, "anonymous" for a request let in without
// credentials, or "" when no Guard decided (auth mode none, a refusal
// before authentication, or no slot).
func UserFrom(ctx context.Context) string {
	s, _ := ctx.Value(identitySlotKey{}).(*identitySlot)
	if s == nil {
		return ""
	}
	if p := s.name.Load(); p != nil {
		return *p
	}
	return ""
}

// setUser records name in ctx's slot, if it has one. Never a secret: a
// user name, a Kubernetes user, a token's subject.
func setUser(ctx context.Context, name string) {
	if s, _ := ctx.Value(identitySlotKey{}).(*identitySlot); s != nil {
		s.name.Store(&name)
	}
}

// anonymous names a request let in without credentials.
const anonymous = "anonymous"
