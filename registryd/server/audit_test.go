package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/stevedore-dev/stevedore/registryd/auth"
)

// syncBuffer is a log sink the server's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAuditLog: every write request, allowed or refused, gets one audit
// line naming the user the auth guard let in (never the password), the
// action, repository, reference and stored digest, and the status; reads
// get none. The request line carries the user too.
func TestAuditLog(t *testing.T) {
	dir := t.TempDir()
	var lines string
	for _, u := range []string{"alice", "reader"} {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-secret-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines += u + ":" + string(h) + "\n"
	}
	file, ro := filepath.Join(dir, "htpasswd"), filepath.Join(dir, "readonly")
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ro, []byte("reader\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backend, err := auth.NewHtpasswd(auth.HtpasswdOptions{File: file, ReadOnlyFile: ro, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	guard, err := auth.New(auth.Options{Mode: auth.Htpasswd, Backend: backend, Secret: []byte("s"), AnonymousPull: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	reg := newTestRegistry(t, &Options{Authorizer: guard, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	as := func(user string) []string {
		return []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+user+"-secret-pw"))}
	}

	config, layer := []byte(`{"architecture":"amd64","os":"linux"}`), []byte("layer bytes")
	cd, ld := digest.FromBytes(config), digest.FromBytes(layer)
	reg.expect(reg.do("POST", "/v2/team/app/blobs/uploads/?digest="+cd.String(), config, as("alice")...), 201, "")
	resp := reg.do("POST", "/v2/team/app/blobs/uploads/", nil, as("alice")...)
	reg.expect(resp, 202, "")
	loc := resp.header.Get("Location")
	resp = reg.do("PATCH", loc, layer, append(as("alice"), "Content-Type", "application/octet-stream")...)
	reg.expect(resp, 202, "")
	loc = resp.header.Get("Location")
	reg.expect(reg.do("GET", loc, nil, as("alice")...), 204, "") // upload status, a read: no audit line
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	reg.expect(reg.do("PUT", loc+sep+"digest="+ld.String(), nil, as("alice")...), 201, "")
	m := imageManifest(config, layer)
	md := digest.FromBytes(m)
	reg.expect(reg.do("PUT", "/v2/team/app/manifests/v1", m, append(as("alice"), "Content-Type", ocispec.MediaTypeImageManifest)...), 201, "")
	reg.expect(reg.do("GET", "/v2/team/app/manifests/v1", nil), 200, "") // anonymous read: no audit line
	reg.expect(reg.do("DELETE", "/v2/team/app/manifests/"+md.String(), nil, as("reader")...), 403, "DENIED")
	reg.expect(reg.do("PUT", "/v2/team/app/manifests/v2", m, "Content-Type", ocispec.MediaTypeImageManifest), 401, "UNAUTHORIZED")
	reg.expect(reg.do("DELETE", "/v2/team/app/blobs/"+ld.String(), nil, as("alice")...), 202, "")

	type line struct {
		Msg, User, Action, Method, Route, Repository, Reference, Digest string
		Status                                                          int
	}
	var audits, requests []line
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var e line
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		switch e.Msg {
		case "audit":
			audits = append(audits, e)
		case "request":
			requests = append(requests, e)
		}
	}
	want := []line{
		{"audit", "alice", "push", "POST", "upload", "team/app", cd.String(), cd.String(), 201},
		{"audit", "alice", "push", "POST", "upload", "team/app", "", "", 202},
		{"audit", "alice", "push", "PATCH", "upload", "team/app", "", "", 202},
		{"audit", "alice", "push", "PUT", "upload", "team/app", ld.String(), ld.String(), 201},
		{"audit", "alice", "push", "PUT", "manifest", "team/app", "v1", md.String(), 201},
		{"audit", "reader", "delete", "DELETE", "manifest", "team/app", md.String(), "", 403},
		{"audit", "", "push", "PUT", "manifest", "team/app", "v2", "", 401},
		{"audit", "alice", "delete", "DELETE", "blob", "team/app", ld.String(), "", 202},
	}
	if len(audits) != len(want) {
		t.Fatalf("%d audit lines, want %d:\n%s", len(audits), len(want), logs.String())
	}
	for i := range want {
		if audits[i] != want[i] {
			t.Errorf("audit line %d:\n got %+v\nwant %+v", i, audits[i], want[i])
		}
	}
	users := map[string]int{}
	for _, r := range requests {
		users[r.User]++
	}
	if users["alice"] != 7 || users["reader"] != 1 || users["anonymous"] != 1 || users[""] != 1 {
		t.Errorf("request lines by user %v, want alice 7, reader 1, anonymous 1, none 1", users)
	}
	if strings.Contains(logs.String(), "secret-pw") {
		t.Error("the log holds a password")
	}
}
