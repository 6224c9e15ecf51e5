package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// HtpasswdOptions configure the htpasswd backend.
type HtpasswdOptions struct {
	// File holds "user:bcrypt-hash" lines (htpasswd -B). Required.
	File string
	// ReadOnlyFile lists users (one per line) who may pull and list only.
	// Optional; a missing file means nobody is read-only.
	ReadOnlyFile string
	// ReloadInterval is how often the files are re-read at most, so a
	// rotated Secret takes effect without a restart. Default 2 s.
	ReloadInterval time.Duration
	// CacheTTL is how long a successful password check is remembered
	// (bcrypt costs ~50 ms a check). Default 1 minute.
	CacheTTL time.Duration
	Logger   *slog.Logger
}

// htpasswd authenticates Basic credentials against bcrypt entries. Every
// user may push and delete, but those in the read-only list.
type htpasswd struct {
	opts HtpasswdOptions
	log  *slog.Logger
	// verified maps sha256(user, password, hash) of checked logins; cleared
	// on reload so a rotated password stops working at once.
	verified *lruCache[struct{}]
	// dummy is compared against for unknown users, so the answer takes as
	// long as for a known user with a wrong password.
	dummy []byte

	mu       sync.Mutex
	checked  time.Time
	sum      [32]byte
	users    map[string][]byte
	readOnly map[string]bool
}

// NewHtpasswd loads o.File (it must be readable now) and returns the backend.
func NewHtpasswd(o HtpasswdOptions) (Backend, error) {
	if o.ReloadInterval <= 0 {
		o.ReloadInterval = 2 * time.Second
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Minute
	}
	h := &htpasswd{opts: o, log: o.Logger, verified: newLRUCache[struct{}](o.CacheTTL, 0, 4096)}
	if h.log == nil {
		h.log = slog.Default()
	}
	if err := h.load(); err != nil {
		return nil, err
	}
	return h, nil
}

// load reads both files and swaps them in when their content changed.
func (h *htpasswd) load() error {
	data, err := os.ReadFile(h.opts.File)
	if err != nil {
		return fmt.Errorf("htpasswd file: %w", err)
	}
	var ro []byte
	if h.opts.ReadOnlyFile != "" {
		ro, err = os.ReadFile(h.opts.ReadOnlyFile)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("htpasswd read-only file: %w", err)
		}
	}
	sum := sha256.Sum256(append(append(append([]byte{}, data...), 0), ro...))
	h.checked = time.Now()
	if sum == h.sum && h.users != nil {
		return nil
	}
	users, skipped := parseHtpasswd(data)
	for _, u := range skipped {
		h.log.Warn("htpasswd entry skipped: only bcrypt hashes (htpasswd -B) are accepted", "user", u)
	}
	h.users, h.readOnly, h.sum = users, parseUserList(ro), sum
	h.verified.clear()
	if err := h.makeDummy(); err != nil {
		return err
	}
	h.log.Info("htpasswd loaded", "users", len(users), "read_only", len(h.readOnly))
	return nil
}

// makeDummy hashes a random password at the users' bcrypt cost, so an
// unknown user costs what a known one does.
func (h *htpasswd) makeDummy() error {
	cost := bcrypt.DefaultCost
	for _, hash := range h.users {
		if c, err := bcrypt.Cost(hash); err == nil {
			cost = c
		}
		break
	}
	if c, err := bcrypt.Cost(h.dummy); err == nil && c == cost {
		return nil
	}
	d, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	h.dummy = d
	return err
}

// current returns the entries, re-reading the files when due. A failed
// re-read (say, mid-rotation) keeps the entries in hand.
func (h *htpasswd) current() (map[string][]byte, map[string]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if time.Since(h.checked) >= h.opts.ReloadInterval {
		if err := h.load(); err != nil {
			h.log.Warn("htpasswd reload failed; keeping the entries loaded before", "error", err)
		}
	}
	return h.users, h.readOnly
}

// cached answers a login checked in the last CacheTTL, without a bcrypt.
func (h *htpasswd) cached(c Credentials) (*Identity, bool) {
	users, readOnly := h.current()
	if c.Bearer || c.Username == "" || c.Password == "" {
		return nil, false
	}
	hash, known := users[c.Username]
	if _, ok := h.verified.get(cacheKey(c.Username, c.Password, string(hash))); known && ok {
		return &Identity{Name: c.Username, ReadOnly: readOnly[c.Username]}, true
	}
	return nil, false
}

func (h *htpasswd) Authenticate(_ context.Context, c Credentials) (*Identity, error) {
	if id, ok := h.cached(c); ok {
		return id, nil
	}
	users, readOnly := h.current()
	if c.Bearer || c.Username == "" || c.Password == "" {
		return nil, ErrBadCredentials
	}
	hash, known := users[c.Username]
	key := cacheKey(c.Username, c.Password, string(hash))
	if !known {
		_ = bcrypt.CompareHashAndPassword(h.dummy, []byte(c.Password))
		return nil, ErrBadCredentials
	}
	if err := bcrypt.CompareHashAndPassword(hash, []byte(c.Password)); err != nil {
		return nil, ErrBadCredentials
	}
	h.verified.set(key, struct{}{})
	return &Identity{Name: c.Username, ReadOnly: readOnly[c.Username]}, nil
}

func (h *htpasswd) Allowed(_ context.Context, id *Identity, a Access) (bool, error) {
	if id.ReadOnly {
		return a.Action == Pull || a.Action == List || a.Action == Authenticated, nil
	}
	return true, nil
}

// parseHtpasswd reads user:hash lines, keeping bcrypt entries only.
func parseHtpasswd(data []byte) (users map[string][]byte, skipped []string) {
	users = map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			continue
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			skipped = append(skipped, user)
			continue
		}
		users[user] = []byte(hash)
	}
	return users, skipped
}

func parseUserList(data []byte) map[string]bool {
	out := map[string]bool{}
	for _, f := range strings.Split(string(data), "\n") {
		if f = strings.TrimSpace(f); f != "" && !strings.HasPrefix(f, "#") {
			out[f] = true
		}
	}
	return out
}

// cacheKey hashes its parts, so caches never hold a password or token.
func cacheKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return string(h.Sum(nil))
}
