package auth

import (
	"fmt"
	"testing"
	"time"
)

// TestLRUCacheEvictsLeastRecentlyUsed: a full cache drops the entry used
// longest ago, never one just used.
func TestLRUCacheEvictsLeastRecentlyUsed(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		touch   string // read just before the insert that overflows
		evicted string
	}{
		{"oldest goes first", 3, "", "k0"},
		{"a read keeps the oldest", 3, "k0", "k1"},
		{"a read keeps the middle", 5, "k2", "k0"},
		{"big cache", 1000, "k0", "k1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newLRUCache[int](time.Hour, 0, tc.size)
			for i := range tc.size {
				c.set(fmt.Sprintf("k%d", i), i)
			}
			if tc.touch != "" {
				if _, ok := c.get(tc.touch); !ok {
					t.Fatalf("%s missing", tc.touch)
				}
			}
			c.set("new", -1)
			if n := c.len(); n != tc.size {
				t.Fatalf("len %d, want %d", n, tc.size)
			}
			for i := range tc.size {
				k := fmt.Sprintf("k%d", i)
				if _, ok := c.get(k); ok == (k == tc.evicted) {
					t.Fatalf("%s present: %v; want %s, and only it, evicted", k, ok, tc.evicted)
				}
			}
		})
	}
}

// TestLRUCacheEvictionIsConstantTime: inserting into a full cache of 200k
// live entries costs what it does in a small one (an eviction that scanned
// the map would take seconds here, holding the one lock).
func TestLRUCacheEvictionIsConstantTime(t *testing.T) {
	const size, inserts = 200_000, 2000
	c := newLRUCache[int](time.Hour, 0, size)
	for i := range size {
		c.set(fmt.Sprintf("fill-%d", i), i)
	}
	start := time.Now()
	for i := range inserts {
		c.set(fmt.Sprintf("new-%d", i), i)
	}
	d := time.Since(start)
	t.Logf("%d inserts into a full cache of %d: %v", inserts, size, d)
	if d > time.Second {
		t.Fatalf("%d inserts into a full cache took %v, want well under 1s", inserts, d)
	}
}

// TestLRUCacheStale: past its TTL an entry is no longer fresh but is kept
// (for outage answers) until keep has passed; then it is gone.
func TestLRUCacheStale(t *testing.T) {
	// Generous margins: a loaded machine may oversleep by a lot.
	c := newLRUCache[int](50*time.Millisecond, 700*time.Millisecond, 10)
	c.set("k", 1)
	if v, fresh, ok := c.lookup("k"); v != 1 || !fresh || !ok {
		t.Fatalf("new entry: %v %v %v", v, fresh, ok)
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok := c.get("k"); ok {
		t.Fatal("an entry past its TTL is served as fresh")
	}
	if v, fresh, ok := c.lookup("k"); v != 1 || fresh || !ok {
		t.Fatalf("stale entry: %v %v %v, want 1, stale, kept", v, fresh, ok)
	}
	time.Sleep(700 * time.Millisecond)
	if _, _, ok := c.lookup("k"); ok {
		t.Fatal("an entry past keeping is still there")
	}
	if n := c.len(); n != 0 {
		t.Fatalf("len %d after expiry", n)
	}
}
