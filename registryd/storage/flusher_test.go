package storage

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestFlusher: a flush starts every flushEvery bytes written, never two at
// once (one due while another runs is dropped, and the writer does not
// wait for it), and stop waits for the flush under way.
func TestFlusher(t *testing.T) {
	var calls, running, overlapped atomic.Int32
	release := make(chan struct{})
	fl := startFlusher(func() {
		if running.Add(1) > 1 {
			overlapped.Add(1)
		}
		calls.Add(1)
		<-release
		running.Add(-1)
	})
	fl.wrote(flushEvery - 1)
	time.Sleep(20 * time.Millisecond)
	if calls.Load() != 0 {
		t.Fatalf("flushed before %d bytes", flushEvery)
	}
	start := time.Now()
	for i := int64(1); i <= 4; i++ {
		fl.wrote(i * flushEvery) // the first starts (and blocks), one waits, the rest are dropped
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("the writer waited %v for a flush", waited)
	}
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { fl.stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("stop returned while a flush was under way")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	<-stopped
	if n := calls.Load(); n != 2 {
		t.Errorf("%d flushes for 4 due while the first ran, want 2 (the running one and one queued)", n)
	}
	if overlapped.Load() != 0 {
		t.Error("two flushes ran at once")
	}
	var nilFlusher *flusher
	nilFlusher.wrote(10 * flushEvery)
	nilFlusher.stop()
}
