package gc

import (
	"context"
	"sync"
	"time"
)

// pacer keeps a run's storage work to a share of the wall-clock time, as
// PostgreSQL's autovacuum cost delay does: the time spent waiting on
// storage (summed over the workers) may not run ahead of share × the time
// since the run started; a worker about to send a request while it is
// ahead sleeps until it is not. share 0.5 is, on average, half a request
// in flight. A backend slowed by load makes each request count for more,
// so the collector backs off exactly when the registry's own clients
// need the backend. A nil pacer does not pace.
type pacer struct {
	share float64
	start time.Time

	mu   sync.Mutex
	busy time.Duration
	// hurry: from then on nothing waits (a batch's intents must not
	// expire while its deletes are paced); zero: no such instant.
	hurry time.Time
}

func newPacer(share float64) *pacer {
	if share <= 0 {
		return nil
	}
	return &pacer{share: share, start: time.Now()}
}

// wait sleeps while the run is ahead of its share.
func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	ahead := time.Duration(float64(p.busy)/p.share) - time.Since(p.start)
	if !p.hurry.IsZero() {
		ahead = min(ahead, time.Until(p.hurry))
	}
	p.mu.Unlock()
	if ahead <= 0 {
		return nil
	}
	t := time.NewTimer(ahead)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// hurryFrom stops every wait at t (zero: never).
func (p *pacer) hurryFrom(t time.Time) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.hurry = t
	p.mu.Unlock()
}

// add counts d of storage work.
func (p *pacer) add(d time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.busy += d
	p.mu.Unlock()
}

// do runs one unit of storage work f, paced.
func (p *pacer) do(ctx context.Context, f func() error) error {
	if err := p.wait(ctx); err != nil {
		return err
	}
	t := time.Now()
	err := f()
	p.add(time.Since(t))
	return err
}
