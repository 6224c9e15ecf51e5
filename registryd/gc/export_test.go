package gc

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"
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

// RefIndexKeyPrefix is where the refs index lives.
const RefIndexKeyPrefix = refIndexPrefix

// RefIndexDigests is every manifest digest the refs index of b holds; an
// index object it cannot read is an error.
func RefIndexDigests(ctx context.Context, b *blob.Bucket) (map[digest.Digest]bool, error) {
	out := map[digest.Digest]bool{}
	for i := range len(hexDigits) {
		m, err := readRefIndexShard(ctx, b, refIndexKey(hexDigits[i]))
		if err != nil {
			return nil, err
		}
		for d := range m {
			out[d] = true
		}
	}
	return out, nil
}
