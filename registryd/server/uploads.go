package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/auth"
	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/reference"
	"github.com/stevedore-dev/stevedore/registryd/storage"
	"github.com/stevedore-dev/stevedore/registryd/uploads"
)

// startUpload is POST /v2/<name>/blobs/uploads/: a mount, a monolithic
// push with ?digest=, or the start of a chunked/streamed upload.
func (s *server) startUpload(w http.ResponseWriter, r *http.Request, p pathParams) error {
	if err := s.checkPush(r, p.name); err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Has("mount") {
		if done, err := s.tryMount(w, r, p.name, q.Get("mount"), q.Get("from")); done || err != nil {
			return err
		}
		// Fall through: the spec's fallback is a fresh upload session (202).
	} else if q.Has("digest") {
		d, err := parseDigest(q.Get("digest"))
		if err != nil {
			return err
		}
		start := time.Now()
		info, err := s.store.PutBlob(r.Context(), p.name, d, r.ContentLength, r.Body)
		if err != nil {
			return storageErr(err, errcode.BlobUnknown, d)
		}
		s.metrics.observeUpload(time.Since(start))
		blobCreated(w, p.name, info)
		return nil
	}
	alg := digest.Canonical
	if a := q.Get("digest-algorithm"); a != "" {
		alg = digest.Algorithm(a)
		if alg != digest.SHA256 && alg != digest.SHA512 {
			return errcode.DigestInvalid.With("unsupported digest-algorithm " + strconv.Quote(a))
		}
	}
	st, err := s.uploads.Start(r.Context(), p.name, alg)
	if err != nil {
		return storageErr(err, errcode.BlobUploadUnknown, nil)
	}
	if s.opts.ChunkMinLength > 0 {
		w.Header().Set("OCI-Chunk-Min-Length", strconv.FormatInt(s.opts.ChunkMinLength, 10))
	}
	s.uploadAccepted(w, st, http.StatusAccepted)
	return nil
}

// tryMount links blob mount from repository from (end-11). It reports
// done=false when the caller should fall back to an upload session: the
// blob is not in from, from is absent (anonymous mounts are declined so a
// repository never learns what other repositories hold), or the client may
// not pull from.
func (s *server) tryMount(w http.ResponseWriter, r *http.Request, name, mount, from string) (bool, error) {
	d, err := parseDigest(mount)
	if err != nil {
		return false, err
	}
	if from == "" {
		return false, nil
	}
	if err := reference.ValidateName(from); err != nil {
		return false, errcode.NameInvalid.Wrap(err, from)
	}
	if s.authorize(r, auth.Access{Repository: from, Action: auth.Pull}) != nil {
		return false, nil
	}
	info, err := s.store.MountBlob(r.Context(), name, from, d)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, storageErr(err, errcode.BlobUnknown, d)
	}
	blobCreated(w, name, info)
	return true, nil
}

// uploadAccepted answers with the upload's new location and progress.
func (s *server) uploadAccepted(w http.ResponseWriter, st uploads.State, status int) {
	s.setUploadHeaders(w, st)
	if status != http.StatusNoContent {
		w.Header().Set("Content-Length", "0")
	}
	w.WriteHeader(status)
}

func (s *server) setUploadHeaders(w http.ResponseWriter, st uploads.State) {
	h := w.Header()
	h.Set("Location", "/v2/"+st.Repo+"/blobs/uploads/"+st.ID+"?_state="+url.QueryEscape(s.uploads.Token(st)))
	h.Set("Range", st.Range())
	h.Set("Docker-Upload-UUID", st.ID)
}

func (s *server) resume(r *http.Request, p pathParams) (uploads.State, error) {
	st, err := s.uploads.Resume(r.Context(), p.name, p.arg, r.URL.Query().Get("_state"))
	if err != nil {
		return st, storageErr(err, errcode.BlobUploadUnknown, p.arg)
	}
	return st, nil
}

// appendChunk writes the request body, if any, as the next part. A chunk
// that does not start at the upload's offset gets 416 with the headers a
// client needs to resume.
func (s *server) appendChunk(w http.ResponseWriter, r *http.Request, st uploads.State) (uploads.State, error) {
	size := r.ContentLength
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, ok := parseContentRange(cr)
		if !ok || start != st.Offset {
			s.setUploadHeaders(w, st)
			return st, errcode.RangeInvalid.With(fmt.Sprintf("upload is at offset %d, chunk range %q", st.Offset, cr))
		}
		if size >= 0 && size != end-start+1 {
			return st, errcode.SizeInvalid.With("Content-Length does not match Content-Range")
		}
		size = end - start + 1
	}
	if size == 0 {
		return st, nil
	}
	next, err := s.uploads.Append(r.Context(), st, r.Body, size)
	if errors.Is(err, uploads.ErrOutOfOrder) {
		s.setUploadHeaders(w, s.uploads.Latest(r.Context(), st))
	}
	if err != nil {
		return st, storageErr(err, errcode.BlobUploadUnknown, st.ID)
	}
	return next, nil
}

// parseContentRange accepts "a-b" (the spec's form) and "bytes a-b[/n]"
// or "bytes=a-b" (sent by some clients).
func parseContentRange(h string) (int64, int64, bool) {
	h = strings.TrimSpace(h)
	h = strings.TrimPrefix(strings.TrimPrefix(h, "bytes"), "=")
	h, _, _ = strings.Cut(strings.TrimSpace(h), "/")
	a, b, ok := strings.Cut(h, "-")
	if !ok {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	return start, end, true
}

func (s *server) patchUpload(w http.ResponseWriter, r *http.Request, p pathParams) error {
	st, err := s.resume(r, p)
	if err != nil {
		return err
	}
	st, err = s.appendChunk(w, r, st)
	if err != nil {
		return err
	}
	s.uploadAccepted(w, st, http.StatusAccepted)
	return nil
}

func (s *server) putUpload(w http.ResponseWriter, r *http.Request, p pathParams) error {
	st, err := s.resume(r, p)
	if err != nil {
		return err
	}
	d, err := parseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return err
	}
	if st, err = s.appendChunk(w, r, st); err != nil {
		return err
	}
	info, err := s.uploads.Commit(r.Context(), st, d)
	if errors.Is(err, uploads.ErrOutOfOrder) {
		s.setUploadHeaders(w, s.uploads.Latest(r.Context(), st))
	}
	if err != nil {
		return storageErr(err, errcode.BlobUploadUnknown, d)
	}
	s.metrics.observeUpload(st.Duration())
	blobCreated(w, p.name, info)
	return nil
}

func (s *server) getUpload(w http.ResponseWriter, r *http.Request, p pathParams) error {
	st, err := s.resume(r, p)
	if err != nil {
		return err
	}
	s.uploadAccepted(w, s.uploads.Latest(r.Context(), st), http.StatusNoContent)
	return nil
}

func (s *server) deleteUpload(w http.ResponseWriter, r *http.Request, p pathParams) error {
	st, err := s.resume(r, p)
	if err != nil {
		return err
	}
	if err := s.uploads.Cancel(r.Context(), st); err != nil {
		return storageErr(err, errcode.BlobUploadUnknown, p.arg)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}
