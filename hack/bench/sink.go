package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// The client's own ceiling: crane pushing into a sink, a registry that
// reads every byte it is sent and keeps, hashes and writes none of them.
// No server that verifies digests and stores blobs can take a push faster
// than this on the same machine, so a ratio target over distribution is
// reachable only when the sink's figure leaves room for it.

// sinkHandler answers just enough of the distribution API for a push:
// every blob and manifest is unknown, uploads are drained.
func sinkHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New() // only manifests are hashed (they are small)
		p := r.URL.Path
		var sink io.Writer = io.Discard
		if strings.Contains(p, "/manifests/") {
			sink = h
		}
		_, _ = io.Copy(sink, r.Body)
		switch {
		case p == "/v2/" || p == "/v2":
			w.WriteHeader(http.StatusOK)
		case r.Method == http.MethodPost && strings.HasSuffix(p, "/blobs/uploads/"):
			var id [8]byte
			_, _ = rand.Read(id[:])
			w.Header().Set("Location", p+hex.EncodeToString(id[:]))
			w.WriteHeader(http.StatusAccepted)
		case r.Method == http.MethodPatch && strings.Contains(p, "/blobs/uploads/"):
			w.Header().Set("Location", p)
			w.WriteHeader(http.StatusAccepted)
		case r.Method == http.MethodPut && strings.Contains(p, "/blobs/uploads/"):
			name := p[len("/v2/"):strings.Index(p, "/blobs/uploads/")]
			w.Header().Set("Location", "/v2/"+name+"/blobs/"+r.URL.Query().Get("digest"))
			w.WriteHeader(http.StatusCreated)
		case r.Method == http.MethodPut && strings.Contains(p, "/manifests/"):
			w.Header().Set("Docker-Content-Digest", "sha256:"+hex.EncodeToString(h.Sum(nil)))
			w.WriteHeader(http.StatusCreated)
		default: // HEAD of a blob or manifest: unknown, so it is pushed
			w.WriteHeader(http.StatusNotFound)
		}
	})
}

// craneSinkLimit is the best of rounds `crane push` runs of the OCI layout
// in layoutDir into a sink, in MB/s.
func craneSinkLimit(ctx context.Context, crane, layoutDir string, total int64, rounds int) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	srv := &http.Server{Handler: sinkHandler()}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	s := &server{kind: "sink", addr: ln.Addr().String()}
	best := 0.0
	for i := 0; i < rounds; i++ {
		if err := warmSource(layoutDir); err != nil {
			return 0, err
		}
		v, err := runCrane(ctx, crane, s, total, "push", layoutDir, fmt.Sprintf("%s/sink/crane:v%d", s.addr, i))
		if err != nil {
			return 0, err
		}
		best = max(best, v)
	}
	return best, nil
}
