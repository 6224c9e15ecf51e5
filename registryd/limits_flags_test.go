package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

// TestLimitDefaults pins the defaults docs/registryd.md lists and the
// operator's grace period is computed from.
func TestLimitDefaults(t *testing.T) {
	fs := flag.NewFlagSet("registryd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c config
	bindFlags(fs, &c)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	want := serverLimits{
		maxConcurrentRequests: 1024,
		bodyTimeout:           30 * time.Second,
		bodyMinBytes:          64 << 10,
		idleTimeout:           30 * time.Second,
		readHeaderTimeout:     10 * time.Second,
		maxHeaderBytes:        1 << 20,
		shutdownDelay:         5 * time.Second,
		shutdownTimeout:       25 * time.Second,
	}
	if c.limits != want {
		t.Fatalf("defaults %+v, want %+v", c.limits, want)
	}
}
