package server

import (
	"net/http"
	"strings"

	"github.com/stevedore-dev/stevedore/registryd/auth"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
)

// endpoint is the shape of a path; the route table pairs it with methods.
type endpoint int

const (
	epNone endpoint = iota
	epBase
	epCatalog
	epManifest
	epBlob
	epUploadStart
	epUpload
	epTags
	epReferrers
)

// pathParams is what parsePath extracts; validated by the handlers.
type pathParams struct {
	name string // repository name
	arg  string // manifest reference, blob digest, upload id or subject
	// mirror is set when the repository caches an upstream (name is then
	// the local repository, mirror.Local).
	mirror *mirror.Route
}

type handlerFunc func(s *server, w http.ResponseWriter, r *http.Request, p pathParams) error

// route is one row of the route table. name labels metrics and logs;
// action is what the Authorizer is asked before the handler runs.
type route struct {
	endpoint endpoint
	method   string
	name     string
	action   auth.Action
	handle   handlerFunc
}

// routeTable lists every endpoint registryd serves (spec ids in comments).
func routeTable() []route {
	return []route{
		{epBase, http.MethodGet, "base", auth.Authenticated, (*server).getBase},  // end-1
		{epBase, http.MethodHead, "base", auth.Authenticated, (*server).getBase}, // end-1
		{epCatalog, http.MethodGet, "catalog", auth.List, (*server).getCatalog},
		{epManifest, http.MethodGet, "manifest", auth.Pull, (*server).getManifest},         // end-3
		{epManifest, http.MethodHead, "manifest", auth.Pull, (*server).getManifest},        // end-3
		{epManifest, http.MethodPut, "manifest", auth.Push, (*server).putManifest},         // end-7a, end-7b
		{epManifest, http.MethodDelete, "manifest", auth.Delete, (*server).deleteManifest}, // end-9
		{epBlob, http.MethodGet, "blob", auth.Pull, (*server).getBlob},                     // end-2
		{epBlob, http.MethodHead, "blob", auth.Pull, (*server).getBlob},                    // end-2
		{epBlob, http.MethodDelete, "blob", auth.Delete, (*server).deleteBlob},             // end-10
		{epUploadStart, http.MethodPost, "upload", auth.Push, (*server).startUpload},       // end-4a, end-4b, end-4c, end-11
		{epUpload, http.MethodPatch, "upload", auth.Push, (*server).patchUpload},           // end-5
		{epUpload, http.MethodPut, "upload", auth.Push, (*server).putUpload},               // end-6
		{epUpload, http.MethodGet, "upload", auth.Push, (*server).getUpload},               // end-13
		{epUpload, http.MethodDelete, "upload", auth.Push, (*server).deleteUpload},         // end-14
		{epTags, http.MethodGet, "tags", auth.Pull, (*server).getTags},                     // end-8a, end-8b
		{epTags, http.MethodHead, "tags", auth.Pull, (*server).getTags},
		{epReferrers, http.MethodGet, "referrers", auth.Pull, (*server).getReferrers}, // end-12a, end-12b
		{epReferrers, http.MethodHead, "referrers", auth.Pull, (*server).getReferrers},
	}
}

// parsePath classifies a /v2/ path. Repository names contain '/', so the
// path is read from its tail: the last one to three segments name the
// endpoint and everything before them is the repository name.
func parsePath(path string) (endpoint, pathParams) {
	if path == "/v2" || path == "/v2/" {
		return epBase, pathParams{}
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return epNone, pathParams{}
	}
	if rest == "_catalog" {
		return epCatalog, pathParams{}
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	name := func(k int) string { return strings.Join(segs[:n-k], "/") }
	switch {
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		if segs[n-1] == "" {
			return epUploadStart, pathParams{name: name(3)}
		}
		return epUpload, pathParams{name: name(3), arg: segs[n-1]}
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		return epUploadStart, pathParams{name: name(2)}
	case n >= 3 && segs[n-2] == "blobs":
		return epBlob, pathParams{name: name(2), arg: segs[n-1]}
	case n >= 3 && segs[n-2] == "manifests":
		return epManifest, pathParams{name: name(2), arg: segs[n-1]}
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		return epTags, pathParams{name: name(2)}
	case n >= 3 && segs[n-2] == "referrers":
		return epReferrers, pathParams{name: name(2), arg: segs[n-1]}
	}
	return epNone, pathParams{}
}
