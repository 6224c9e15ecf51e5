package bucket

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestConnectionsAreReused sends each real object store three bursts of 32
// concurrent requests, as registryd does under a fleet of clients: later
// bursts must ride the connections earlier ones opened. With
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
			// A burst may reach more concurrency than the one before it (a
			// fast server answers some of the first burst before the last
			// are sent: [23 0 8] seen), so the bound is on all three: never
			// more connections than requests in flight at once.
			t.Logf("dials per burst of %d requests: %v", burst, perBurst)
			if total := perBurst[0] + perBurst[1] + perBurst[2]; total > burst+4 {
				t.Errorf("3 bursts of %d dialed %d connections, want at most %d: idle connections were dropped", burst, total, burst+4)
			}
		})
	}
}
