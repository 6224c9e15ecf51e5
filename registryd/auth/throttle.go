package auth

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// ThrottleOptions bound what failed logins cost. A login that must be
// checked (a bcrypt, a TokenReview) takes one token from two buckets: the
// client address's and the (client address, user name) pair's; a success
// gives it back. With either bucket empty the login is not checked at all
// and is answered 429 TOOMANYREQUESTS with Retry-After.
//
// Keying by address alone would let one client behind a shared address (an
// ingress, a NAT) lock every other client there out of new logins; keying
// by user alone would let anyone lock a user out from anywhere, and a
// spray of user names would cost a check each. The pair bounds guessing
// one user's password and the address bounds a spray, and logins the
// caches already hold (checked in the last minute) are never throttled, so
// a client that was logged in keeps working through a storm from its own
// address. Addresses are the TCP peer's (X-Forwarded-For is not trusted);
// IPv6 clients are keyed by their /64.
type ThrottleOptions struct {
	// PerUser is how many failed logins a (client, user) pair may make in a
	// burst, then one per PerUserEvery. Default 5, one per 12 s.
	PerUser      int
	PerUserEvery time.Duration
	// PerClient is the same for a client address over all user names.
	// Default 20, one per 3 s.
	PerClient      int
	PerClientEvery time.Duration
	// Clients bounds the addresses and pairs remembered (least recently
	// seen forgotten first). Default 65536.
	Clients int
	// Disabled turns throttling off.
	Disabled bool
}

func (o *ThrottleOptions) defaults() {
	if o.PerUser <= 0 {
		o.PerUser = 5
	}
	if o.PerUserEvery <= 0 {
		o.PerUserEvery = 12 * time.Second
	}
	if o.PerClient <= 0 {
		o.PerClient = 20
	}
	if o.PerClientEvery <= 0 {
		o.PerClientEvery = 3 * time.Second
	}
	if o.Clients <= 0 {
		o.Clients = 1 << 16
	}
}

// throttle holds one token bucket per key.
type throttle struct {
	opts    ThrottleOptions
	buckets *lruCache[*tokenBucket]
}

// tokenBucket counts the checks a key may still make; refilled lazily.
type tokenBucket struct {
	mu     sync.Mutex
	tokens float64
	at     time.Time
}

func newThrottle(o ThrottleOptions) *throttle {
	o.defaults()
	// A bucket unused for longer than a full refill is full again: it may
	// be forgotten.
	keep := max(time.Duration(o.PerClient)*o.PerClientEvery, time.Duration(o.PerUser)*o.PerUserEvery)
	return &throttle{opts: o, buckets: newLRUCache[*tokenBucket](keep, keep, o.Clients)}
}

// take reserves one check for the client of r logging in as user. It
// returns a release that gives the token back (call it on success), or,
// when a bucket is empty, how long until one refills.
func (t *throttle) take(r *http.Request, user string) (release func(), wait time.Duration) {
	if t.opts.Disabled {
		return func() {}, 0
	}
	client := clientKey(r.RemoteAddr)
	keys := [2]string{"c\x00" + client, "u\x00" + client + "\x00" + user}
	sizes := [2]int{t.opts.PerClient, t.opts.PerUser}
	every := [2]time.Duration{t.opts.PerClientEvery, t.opts.PerUserEvery}
	var taken [2]*tokenBucket
	now := time.Now()
	for i, k := range keys {
		b := t.bucket(k, sizes[i])
		if w := b.take(now, sizes[i], every[i]); w > 0 {
			for j, tb := range taken[:i] {
				tb.give(sizes[j])
			}
			return nil, w
		}
		taken[i] = b
	}
	return func() {
		taken[0].give(sizes[0])
		taken[1].give(sizes[1])
	}, 0
}

func (t *throttle) bucket(key string, size int) *tokenBucket {
	return t.buckets.getOrSet(key, func() *tokenBucket { return &tokenBucket{tokens: float64(size), at: time.Now()} })
}

// take refills the bucket for the time passed, then takes one token; when
// there is none it returns the wait for the next.
func (b *tokenBucket) take(now time.Time, size int, every time.Duration) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := now.Sub(b.at); d > 0 {
		b.tokens = math.Min(float64(size), b.tokens+float64(d)/float64(every))
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(every))
}

func (b *tokenBucket) give(size int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = math.Min(float64(size), b.tokens+1)
}

// clientKey is the address a client is throttled by: its IP, or for IPv6
// its /64 (one host usually holds a whole /64).
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// retryAfter is wait in whole seconds, at least 1, for Retry-After.
func retryAfter(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
