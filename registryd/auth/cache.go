package auth

import (
	"container/list"
	"sync"
	"time"
)

// lruCache remembers decisions for a short time, bounded in size, so a pull
// burst costs one password check or one API round trip, not hundreds. Every
// operation is O(1): entries sit on a recency list, and a full cache drops
// its least recently used entry.
//
// An entry is fresh for ttl, then kept (stale) until keep has passed since
// it was set: a stale answer is only served when its authority cannot be
// asked (an API-server outage), never instead of asking.
type lruCache[V any] struct {
	ttl, keep time.Duration
	max       int

	mu    sync.Mutex
	ll    *list.List // front: most recently used; values are *lruEntry[V]
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key          string
	v            V
	fresh, stale time.Time
}

// newLRUCache returns a cache of at most max entries, fresh for ttl and
// kept for keep (0: no stale answers).
func newLRUCache[V any](ttl, keep time.Duration, max int) *lruCache[V] {
	if keep < ttl {
		keep = ttl
	}
	return &lruCache[V]{ttl: ttl, keep: keep, max: max, ll: list.New(), items: make(map[string]*list.Element)}
}

// get returns the fresh value of key.
func (c *lruCache[V]) get(key string) (V, bool) {
	v, fresh, ok := c.lookup(key)
	if !fresh {
		var zero V
		return zero, false
	}
	return v, ok
}

// lookup returns key's value and whether it is still fresh; ok is false
// once the entry is past keeping too.
func (c *lruCache[V]) lookup(key string) (v V, fresh, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return v, false, false
	}
	e := el.Value.(*lruEntry[V])
	now := time.Now()
	if now.After(e.stale) {
		c.remove(el)
		return v, false, false
	}
	c.ll.MoveToFront(el)
	return e.v, !now.After(e.fresh), true
}

func (c *lruCache[V]) set(key string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*lruEntry[V])
		e.v, e.fresh, e.stale = v, now.Add(c.ttl), now.Add(c.keep)
		c.ll.MoveToFront(el)
		return
	}
	for c.ll.Len() >= c.max && c.ll.Len() > 0 {
		c.remove(c.ll.Back())
	}
	e := &lruEntry[V]{key: key, v: v, fresh: now.Add(c.ttl), stale: now.Add(c.keep)}
	c.items[key] = c.ll.PushFront(e)
}

// getOrSet returns key's value, making it with mk when missing or past
// keeping, and restarts its lifetime: what is in use stays.
func (c *lruCache[V]) getOrSet(key string, mk func() V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if el, ok := c.items[key]; ok {
		e := el.Value.(*lruEntry[V])
		if !now.After(e.stale) {
			e.fresh, e.stale = now.Add(c.ttl), now.Add(c.keep)
			c.ll.MoveToFront(el)
			return e.v
		}
		c.remove(el)
	}
	for c.ll.Len() >= c.max && c.ll.Len() > 0 {
		c.remove(c.ll.Back())
	}
	e := &lruEntry[V]{key: key, v: mk(), fresh: now.Add(c.ttl), stale: now.Add(c.keep)}
	c.items[key] = c.ll.PushFront(e)
	return e.v
}

// delete forgets key.
func (c *lruCache[V]) delete(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.remove(el)
	}
}

func (c *lruCache[V]) remove(el *list.Element) {
	c.ll.Remove(el)
	delete(c.items, el.Value.(*lruEntry[V]).key)
}

func (c *lruCache[V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
}

func (c *lruCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
