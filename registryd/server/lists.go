package server

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
)

// pageSize reads ?n=: absent means the server's page size, values above
// it are capped (the spec lets a server return fewer and link the rest).
func (s *server) pageSize(q url.Values) (int, error) {
	if !q.Has("n") {
		return s.opts.PageSize, nil
	}
	n, err := strconv.Atoi(q.Get("n"))
	if err != nil || n < 0 {
		return 0, errcode.PaginationInvalid.With(q.Get("n"))
	}
	return min(n, s.opts.PageSize), nil
}

// setNextLink sets the RFC 5988 Link header pointing at the next page.
func setNextLink(w http.ResponseWriter, path string, n int, last string, extra url.Values) {
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	q.Set("n", strconv.Itoa(n))
	q.Set("last", last)
	w.Header().Set("Link", "<"+path+"?"+q.Encode()+`>; rel="next"`)
}

// getTags is end-8a/end-8b.
func (s *server) getTags(w http.ResponseWriter, r *http.Request, p pathParams) error {
	q := r.URL.Query()
	n, err := s.pageSize(q)
	if err != nil {
		return err
	}
	ok, err := s.store.RepositoryExists(r.Context(), p.name)
	if err != nil {
		return storageErr(err, errcode.NameUnknown, p.name)
	}
	if !ok {
		return errcode.NameUnknown.With(p.name)
	}
	list := []string{}
	if n > 0 {
		// One more than asked tells whether a next page exists.
		if list, err = s.tags.List(r.Context(), p.name, n+1, q.Get("last")); err != nil {
			return storageErr(err, errcode.NameUnknown, p.name)
		}
		if len(list) > n {
			list = list[:n]
			setNextLink(w, r.URL.Path, n, list[n-1], nil)
		}
	}
	writeJSON(w, r, http.StatusOK, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{p.name, list})
	return nil
}

// getCatalog is GET /v2/_catalog, paginated like tags.
func (s *server) getCatalog(w http.ResponseWriter, r *http.Request, _ pathParams) error {
	q := r.URL.Query()
	n, err := s.pageSize(q)
	if err != nil {
		return err
	}
	all, err := s.repositories(r.Context())
	if err != nil {
		return storageErr(err, errcode.NameUnknown, nil)
	}
	last := q.Get("last")
	i, _ := slices.BinarySearch(all, last)
	if i < len(all) && all[i] == last {
		i++
	}
	page := all[i:]
	if len(page) > n {
		page = page[:n]
		setNextLink(w, r.URL.Path, n, page[n-1], nil)
	}
	writeJSON(w, r, http.StatusOK, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{append([]string{}, page...)})
	return nil
}

// getReferrers is end-12a/end-12b: an OCI index of the manifests whose
// subject is the digest, optionally filtered by artifactType.
func (s *server) getReferrers(w http.ResponseWriter, r *http.Request, p pathParams) error {
	subject, err := parseDigest(p.arg)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	n, err := s.pageSize(q)
	if err != nil {
		return err
	}
	all, err := s.store.Referrers(r.Context(), p.name, subject)
	if err != nil {
		return storageErr(err, errcode.ManifestUnknown, subject)
	}
	list := []ocispec.Descriptor{}
	at := q.Get("artifactType")
	last := q.Get("last")
	for _, d := range all {
		if (at == "" || d.ArtifactType == at) && (last == "" || d.Digest.String() > last) {
			list = append(list, d)
		}
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if len(list) > n && n > 0 {
		list = list[:n]
		extra := url.Values{}
		if at != "" {
			extra.Set("artifactType", at)
		}
		setNextLink(w, r.URL.Path, n, list[n-1].Digest.String(), extra)
	}
	writeJSON(w, r, http.StatusOK, ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specsVersioned(), MediaType: ocispec.MediaTypeImageIndex, Manifests: list,
	})
	return nil
}
