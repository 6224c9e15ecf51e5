package bucket

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestConnectionsAreReused sends each real object store three bursts of 32
// concurrent requests, as registryd does under a fleet of clients: the
// second and third bursts must ride the first one's connections. With
// net/http's default of 2 idle connections per host (the AWS SDK's: 10),
// each burst dialed about 30 (or 22) new ones and closed them again.
func TestConnectionsAreReused(t *testing.T) {
	const burst = 32
	for _, kind := range storageservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			srv := storageservers.Start(t, kind)
			var dials atomic.Int64
			count := func(string, string, syscall.RawConn) error { dials.Add(1); return nil }
			b, err := Open(t.Context(), srv.URL, Options{Prefix: "conns-test/", Env: srv.Env, DialControl: count})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.WriteAll(t.Context(), "object", []byte("x"), nil); err != nil {
				t.Fatal(err)
			}
			var perBurst []int64
			for range 3 {
				before := dials.Load()
				var wg sync.WaitGroup
				for range burst {
					wg.Go(func() {
						if _, err := b.Attributes(t.Context(), "object"); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
				perBurst = append(perBurst, dials.Load()-before)
			}
			t.Logf("dials per burst of %d requests: %v", burst, perBurst)
			if later := perBurst[1] + perBurst[2]; later > 4 {
				t.Errorf("bursts 2 and 3 dialed %d connections, want at most 4: idle connections were dropped", later)
			}
		})
	}
}
