// Package auth decides who may do what on registryd, by the Registry's auth
// mode: none (everyone, development only), htpasswd (bcrypt entries from a
// file, reloaded when it changes) or kubernetes (tokens checked with
// TokenReview, actions with SubjectAccessReview). Every mode also accepts the
// short-lived tokens its /token endpoint issues (the Docker token flow).
//
// The server asks a Guard about each request with the Access its route
// names; the Guard answers nil, 401 UNAUTHORIZED with a challenge (no or bad
// credentials), 403 DENIED (known identity, action not allowed) or 503 (the
// API server could not be asked).
package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// Action is what a request does to a repository. They are the verbs of the
// repositories resource in kubernetes mode.
type Action string

const (
	// Authenticated asks only for a valid identity (GET /v2/).
	Authenticated Action = ""
	Pull          Action = "pull"
	Push          Action = "push"
	Delete        Action = "delete"
	// List is the catalog: every repository's name.
	List Action = "list"
)

// Access is one action on one repository ("" for Authenticated and List).
type Access struct {
	Repository string
	Action     Action
}

func (a Access) String() string {
	if a.Repository == "" {
		return string(a.Action)
	}
	return string(a.Action) + " " + a.Repository
}

// Identity is an authenticated client.
type Identity struct {
	// Name is the htpasswd user or the Kubernetes user name.
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
	// ReadOnly htpasswd users may pull and list only.
	ReadOnly bool
}

// Credentials are what a request presented: Basic user and password, or a
// Bearer token (in Password, with Bearer set).
type Credentials struct {
	Username, Password string
	Bearer             bool
}

// Backend is one mode's authority over identities and permissions.
type Backend interface {
	// Authenticate returns the identity behind c, ErrBadCredentials when c
	// proves nothing, or an error wrapping ErrUnavailable.
	Authenticate(ctx context.Context, c Credentials) (*Identity, error)
	// Allowed reports whether id may perform a.
	Allowed(ctx context.Context, id *Identity, a Access) (bool, error)
}

var (
	// ErrBadCredentials: the credentials are wrong, unknown or expired.
	ErrBadCredentials = errors.New("bad credentials")
	// ErrUnavailable: the authority could not answer; retry later.
	ErrUnavailable = errors.New("auth backend unavailable")
)

// Scope is the Docker token scope string for a, as put in challenges and
// token requests: repository:NAME:ACTIONS or registry:catalog:*.
func (a Access) Scope() string {
	switch a.Action {
	case Authenticated:
		return ""
	case List:
		return "registry:catalog:*"
	case Push:
		// Clients push after checking what exists, so they want both.
		return "repository:" + a.Repository + ":pull,push"
	}
	return "repository:" + a.Repository + ":" + string(a.Action)
}

// parseScope reads one token-request scope into the accesses it asks for.
func parseScope(s string) ([]Access, error) {
	typ, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("scope %q: want type:name:actions", s)
	}
	i := strings.LastIndex(rest, ":")
	if i < 0 {
		return nil, fmt.Errorf("scope %q: want type:name:actions", s)
	}
	name, actions := rest[:i], rest[i+1:]
	if typ == "registry" && name == "catalog" {
		return []Access{{Action: List}}, nil
	}
	if typ != "repository" {
		return nil, nil // unknown resource types grant nothing
	}
	var out []Access
	for _, act := range strings.Split(actions, ",") {
		switch Action(act) {
		case Pull, Push, Delete:
			out = append(out, Access{Repository: name, Action: Action(act)})
		case "*":
			out = append(out, Access{name, Pull}, Access{name, Push}, Access{name, Delete})
		}
	}
	return out, nil
}
