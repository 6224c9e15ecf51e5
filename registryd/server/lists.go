package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
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
	// A tag listed is a repository that exists; only an empty page asks
	// the bucket (a repository of untagged manifests or blobs alone). The
	// bucket's answer costs a listing, and on a local directory fileblob
	// walks every file under the repository for it (each tag's journal
	// entry among them): 0.2 s a page at 20,000 tags.
	if len(list) == 0 {
		ok, err := s.store.RepositoryExists(r.Context(), p.name)
		if err != nil {
			return storageErr(err, errcode.NameUnknown, p.name)
		}
		if !ok {
			return errcode.NameUnknown.With(p.name)
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
	page := []string{}
	if n > 0 { // n=0 asks for nothing, not for a page to follow
		var more bool
		if page, more, err = s.catalogPage(r.Context(), q.Get("last"), n); err != nil {
			return storageErr(err, errcode.NameUnknown, nil)
		}
		if more {
			setNextLink(w, r.URL.Path, n, page[n-1], nil)
		}
	}
	writeJSON(w, r, http.StatusOK, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{page})
	return nil
}

// getReferrers is end-12a/end-12b: an OCI index of the manifests whose
// subject is the digest, optionally filtered by artifactType. Pages are
// read from the bucket a page at a time; the next page's Link carries the
// backend's listing token, signed so a client cannot hand the backend one
// of its own making.
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
	var token []byte
	if q.Has("page") {
		if token, err = s.openPageToken(p.name, subject, q.Get("page")); err != nil {
			return err
		}
	}
	at := q.Get("artifactType")
	var keep func(ocispec.Descriptor) bool
	if at != "" {
		keep = func(d ocispec.Descriptor) bool { return d.ArtifactType == at }
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	list := []ocispec.Descriptor{}
	if n > 0 {
		page, next, err := s.store.ReferrersPage(r.Context(), p.name, subject, n, token, keep)
		if err != nil {
			return storageErr(err, errcode.ManifestUnknown, subject)
		}
		list = append(list, page...)
		if next != nil {
			q := url.Values{}
			if at != "" {
				q.Set("artifactType", at)
			}
			q.Set("n", strconv.Itoa(n))
			q.Set("page", s.sealPageToken(p.name, subject, next))
			w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
		}
	}
	writeJSON(w, r, http.StatusOK, ocispec.MediaTypeImageIndex, ocispec.Index{
		Versioned: specsVersioned(), MediaType: ocispec.MediaTypeImageIndex, Manifests: list,
	})
	return nil
}

// pageTokenMAC binds a listing token to the server's secret and to the
// listing it continues.
func (s *server) pageTokenMAC(name string, subject digest.Digest, token []byte) []byte {
	m := hmac.New(sha256.New, s.opts.Secret)
	m.Write([]byte("referrers\x00" + name + "\x00" + subject.String() + "\x00"))
	m.Write(token)
	return m.Sum(nil)[:16]
}

func (s *server) sealPageToken(name string, subject digest.Digest, token []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString(token) + "." + enc.EncodeToString(s.pageTokenMAC(name, subject, token))
}

func (s *server) openPageToken(name string, subject digest.Digest, sealed string) ([]byte, error) {
	enc := base64.RawURLEncoding
	t, m, ok := strings.Cut(sealed, ".")
	token, err1 := enc.DecodeString(t)
	mac, err2 := enc.DecodeString(m)
	if !ok || err1 != nil || err2 != nil || len(token) == 0 || !hmac.Equal(mac, s.pageTokenMAC(name, subject, token)) {
		return nil, errcode.PaginationInvalid.With("page")
	}
	return token, nil
}
