package gc

import (
	"context"
	"testing"
	"time"
)

// TestPacer: storage work may take only its share of the wall time, so a
// run of it lasts at least work/share (a lower bound: a slow machine only
// makes it longer); past the hurry instant nothing waits; nil paces
// nothing.
func TestPacer(t *testing.T) {
	const unit, units = 20 * time.Millisecond, 10
	for _, share := range []float64{0.5, 0.25} {
		p := newPacer(share)
		start := time.Now()
		for range units {
			if err := p.do(t.Context(), func() error { time.Sleep(unit); return nil }); err != nil {
				t.Fatal(err)
			}
		}
		// The last unit's wait is not taken: nothing follows it.
		want := time.Duration(float64((units-1)*unit)/share) + unit
		if took := time.Since(start); took < want*9/10 {
			t.Errorf("share %.2f: %d units of %v took %v, want ≥ %v", share, units, unit, took, want)
		}
	}

	p := newPacer(0.01)
	p.add(time.Second) // 100 s ahead
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if err := p.wait(ctx); err == nil {
		t.Error("a wait 100 s ahead returned before its context ended")
	}
	cancel()
	p.hurryFrom(time.Now())
	start := time.Now()
	if err := p.wait(t.Context()); err != nil || time.Since(start) > 5*time.Second {
		t.Errorf("past the hurry instant: wait took %v (%v)", time.Since(start), err)
	}
	p.hurryFrom(time.Time{})
	ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := p.wait(ctx); err == nil {
		t.Error("the hurry cleared, a wait 100 s ahead returned before its context ended")
	}

	var none *pacer
	if err := none.do(t.Context(), func() error { return nil }); err != nil || newPacer(0) != nil {
		t.Error("no pacing: nil pacer")
	}
}
