package storage

import (
	"container/list"
	"sync"
	"time"
)

// Manifest reads go through two small in-memory caches, so that a pull
// reads from the bucket only what can change under it: the tag, and
// whether the manifest is still linked. Neither needs invalidating when
// another replica writes, which keeps registryd stateless:
//   - manifest content is keyed by digest, and the bytes of a digest never
//     change (the link is checked before the cache is asked);
//   - a repository's manifest link (media type and size) is kept with the
//     modification time and size the bucket reports for the link object,
//     and used only while a fresh Attributes call (one stat on file://)
//     reports the same: a deleted link misses, a rewritten one differs in
//     modification time. Within the filesystem's timestamp granularity
//     (a few ms) only the size tells, so a manifest deleted and pushed
//     again that fast under another media type of the same length would
//     keep its old Content-Type here until its link changes again.
const (
	manifestCacheBytes = 8 << 20
	linkCacheEntries   = 8192
)

// stamp identifies one version of an object: what Attributes reports.
type stamp struct {
	modTime time.Time
	size    int64
}

// lru is a mutex-guarded least-recently-used map bounded by a total cost.
type lru[V any] struct {
	mu    sync.Mutex
	max   int64
	used  int64
	order *list.List // front: most recently used; values *lruEntry[V]
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key   string
	value V
	stamp stamp
	cost  int64
}

func newLRU[V any](max int64) *lru[V] {
	return &lru[V]{max: max, order: list.New(), items: map[string]*list.Element{}}
}

// get returns the value cached for key if it was stored with stamp st.
func (c *lru[V]) get(key string, st stamp) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*lruEntry[V])
	if e.stamp.size != st.size || !e.stamp.modTime.Equal(st.modTime) {
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.value, true
}

// put stores value under key with stamp st, evicting the least recently
// used entries past the bound. A value costing more than the bound is not
// kept.
func (c *lru[V]) put(key string, value V, st stamp, cost int64) {
	if cost > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.used -= el.Value.(*lruEntry[V]).cost
		c.order.Remove(el)
	}
	c.items[key] = c.order.PushFront(&lruEntry[V]{key: key, value: value, stamp: st, cost: cost})
	c.used += cost
	for c.used > c.max {
		el := c.order.Back()
		e := el.Value.(*lruEntry[V])
		c.order.Remove(el)
		delete(c.items, e.key)
		c.used -= e.cost
	}
}
