package storage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
)

// TestEachSurvivesConcurrentDeletes: fileblob fails a listing with
// NotFound when a file goes between its directory read and its stat; a
// DELETE by digest untagging while another untag deletes in the same
// _tags/ directory answered 404 and left a tag behind (the adversarial
// suite found it). Each lists on, and never loses a key that stays.
func TestEachSurvivesConcurrentDeletes(t *testing.T) {
	ctx := context.Background()
	b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const keep, churn = 50, 100
	for i := range keep {
		if err := b.WriteAll(ctx, fmt.Sprintf("dir/keep-%03d", i), []byte("k"), nil); err != nil {
			t.Fatal(err)
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 1 {
		for i := range churn {
			_ = b.WriteAll(ctx, fmt.Sprintf("dir/churn%d-%03d", g, i), []byte("c"), nil)
		}
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("dir/churn%d-%03d", g, i%churn)
				_ = b.Delete(ctx, k)
				_ = b.WriteAll(ctx, k, []byte("c"), nil)
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for round := range 30 {
		n := 0
		err := Each(ctx, b, &blob.ListOptions{Prefix: "dir/", Delimiter: "/"}, func(obj *blob.ListObject) (bool, error) {
			if len(obj.Key) > 9 && obj.Key[:9] == "dir/keep-" {
				n++
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if n != keep {
			t.Fatalf("round %d: listed %d of the %d keys that stayed", round, n, keep)
		}
	}
}
