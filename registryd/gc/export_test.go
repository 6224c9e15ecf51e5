package gc

import (
	"context"
	"time"

	"gocloud.dev/blob"
)

// WithPause sets Options.pause.
func WithPause(o Options, d time.Duration) Options {
	o.pause = d
	return o
}

// TakeLock takes the bucket's collector lock as a run would.
func TakeLock(ctx context.Context, b *blob.Bucket, run string) (func(), error) {
	c := &collector{bucket: b, run: run}
	return c.lock(ctx)
}
