package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/stevedore-dev/stevedore/registryd/errcode"
	"github.com/stevedore-dev/stevedore/registryd/mirror"
	"github.com/stevedore-dev/stevedore/registryd/storage"
)

func (s *server) getBlob(w http.ResponseWriter, r *http.Request, p pathParams) error {
	d, err := parseDigest(p.arg)
	if err != nil {
		return err
	}
	if p.mirror != nil && r.Method == http.MethodGet {
		if done, err := s.getMirroredBlob(w, r, p.mirror, d); done || err != nil {
			return err
		}
	}
	var info storage.BlobInfo
	if r.Method == http.MethodHead {
		// A 200 here lets the client skip the upload: keep the link
		// fresh for the garbage collector (docs/gc.md).
		info, err = s.store.StatBlobFresh(r.Context(), p.name, d, s.opts.GCTouchInterval)
	} else {
		info, err = s.store.StatBlob(r.Context(), p.name, d)
	}
	if p.mirror != nil && errors.Is(err, storage.ErrNotFound) {
		// A HEAD does not fetch: the upstream's answer is enough.
		info.Digest = d
		info.Size, err = s.opts.Mirror.BlobSize(r.Context(), p.mirror, d)
	}
	if err != nil {
		return storageErr(err, errcode.BlobUnknown, d)
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	if r.Method == http.MethodGet && s.redirect(w, r, d) {
		return nil
	}
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Etag", `"`+d.String()+`"`)
	offset, length, status := int64(0), info.Size, http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" {
		var ok bool
		offset, length, ok = parseRange(rg, info.Size)
		if !ok {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", info.Size))
			return errcode.RangeInvalid.With(rg)
		}
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", offset, offset+length-1, info.Size))
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead || length == 0 {
		// An empty blob needs no read: S3 answers a zero-length range
		// with 416.
		w.WriteHeader(status)
		return nil
	}
	rd, err := s.store.OpenBlob(r.Context(), d, offset, length)
	if err != nil {
		return storageErr(err, errcode.BlobUnknown, d)
	}
	defer rd.Close()
	w.WriteHeader(status)
	// Past the header an error can only cut the body short; the client
	// sees a short read against Content-Length.
	_, _ = io.Copy(w, rd)
	return nil
}

// getMirroredBlob makes blob d of a mirrored repository available, fetching
// it upstream once however many ask. The request that causes the fetch
// gets the bytes as they are stored (done true); every other one is then
// served from the bucket as usual.
func (s *server) getMirroredBlob(w http.ResponseWriter, r *http.Request, rt *mirror.Route, d digest.Digest) (done bool, err error) {
	var first func(int64) io.Writer
	if r.Header.Get("Range") == "" {
		first = func(size int64) io.Writer {
			h := w.Header()
			h.Set("Docker-Content-Digest", d.String())
			h.Set("Accept-Ranges", "bytes")
			h.Set("Content-Type", "application/octet-stream")
			h.Set("Etag", `"`+d.String()+`"`)
			h.Set("Content-Length", strconv.FormatInt(size, 10))
			w.WriteHeader(http.StatusOK)
			return flushingWriter{w}
		}
	}
	streamed, err := s.opts.Mirror.EnsureBlob(r.Context(), rt, d, first)
	if streamed && err != nil {
		// The client has a prefix of bytes that did not verify (nothing
		// was stored): cut the response short.
		panic(http.ErrAbortHandler)
	}
	if err != nil {
		return false, storageErr(err, errcode.BlobUnknown, d)
	}
	return streamed, nil
}

// flushingWriter is a response the mirror can flush (through the wrappers
// of the middleware) once it sends the last byte: the client then has the
// blob whole while the store finishes.
type flushingWriter struct{ http.ResponseWriter }

func (f flushingWriter) Flush() error { return http.NewResponseController(f.ResponseWriter).Flush() }

// redirect sends the client to a signed URL of blob d when configured and
// the backend can sign; otherwise the caller serves the bytes.
func (s *server) redirect(w http.ResponseWriter, r *http.Request, d digest.Digest) bool {
	if s.opts.RedirectTTL <= 0 {
		return false
	}
	u, err := s.store.SignedURL(r.Context(), d, s.opts.RedirectTTL)
	if err != nil {
		if errors.Is(err, storage.ErrUnsupported) {
			s.cannotSign.Do(func() {
				s.log.WarnContext(r.Context(), "redirects are on but this storage cannot sign URLs: registryd serves blob bytes itself", "error", err)
			})
		} else {
			s.log.WarnContext(r.Context(), "signing a blob URL failed; serving it directly", "digest", d, "error", err)
		}
		return false
	}
	w.Header().Set("Location", u)
	w.WriteHeader(http.StatusTemporaryRedirect)
	return true
}

// parseRange parses a single "bytes=a-b", "bytes=a-" or "bytes=-n" range
// against size, returning offset and length.
func parseRange(h string, size int64) (int64, int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false
	}
	if a == "" { // suffix: the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, false
		}
		n = min(n, size)
		return size - n, n, true
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end := size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < start {
			return 0, 0, false
		}
		end = min(e, size-1)
	}
	return start, end - start + 1, true
}

func (s *server) deleteBlob(w http.ResponseWriter, r *http.Request, p pathParams) error {
	d, err := parseDigest(p.arg)
	if err != nil {
		return err
	}
	err = s.store.DeleteBlob(r.Context(), p.name, d)
	if errors.Is(err, storage.ErrNotFound) {
		// GET and HEAD serve a manifest through this endpoint, so a 404
		// here would contradict them; deleting it here would bypass what a
		// manifest DELETE does (its tags, its referrers entry). Refuse, and
		// say where to delete it.
		if _, merr := s.store.StatManifest(r.Context(), p.name, d); merr == nil {
			e := errcode.Unsupported.With(d.String() + " is a manifest: delete it with DELETE /v2/" + p.name + "/manifests/" + d.String())
			e.Header = http.Header{"Allow": {"GET, HEAD"}}
			return e
		}
	}
	if err != nil {
		return storageErr(err, errcode.BlobUnknown, d)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// blobCreated answers a finished blob push (end-4b, end-6, end-11).
func blobCreated(w http.ResponseWriter, name string, info storage.BlobInfo) {
	h := w.Header()
	h.Set("Location", "/v2/"+name+"/blobs/"+info.Digest.String())
	h.Set("Docker-Content-Digest", info.Digest.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}
