package auth

import (
	"sync"
	"time"
)

// ttlCache remembers decisions for a short time, bounded in size, so a pull
// burst costs one password check or one API round trip, not hundreds.
type ttlCache[V any] struct {
	mu  sync.Mutex
	ttl time.Duration
	max int
	m   map[string]cacheEntry[V]
}

type cacheEntry[V any] struct {
	v       V
	expires time.Time
}

func newTTLCache[V any](ttl time.Duration, max int) *ttlCache[V] {
	return &ttlCache[V]{ttl: ttl, max: max, m: make(map[string]cacheEntry[V])}
}

func (c *ttlCache[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Now().After(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[V]) set(key string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.m) >= c.max {
		for k, e := range c.m { // expired entries first
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		for k := range c.m { // then any, until there is room
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[key] = cacheEntry[V]{v: v, expires: now.Add(c.ttl)}
}

func (c *ttlCache[V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}

func (c *ttlCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
