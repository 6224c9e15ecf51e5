package storage

import (
	"context"
	"testing"

	"gocloud.dev/blob"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

// TestBatchDeleter: on S3 (versitygw) behind a storage prefix, one request
// deletes the keys it names under the prefix and nothing else; a missing
// key is no error; on a directory there is no batch deleter.
func TestBatchDeleter(t *testing.T) {
	ctx := t.Context()
	srv := storageservers.Start(t, storageservers.S3)
	open := func(prefix string) *blob.Bucket {
		b, err := bucket.Open(ctx, srv.URL, bucket.Options{Env: srv.Env, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	root, scoped := open(""), open("reg-a/")
	for _, k := range []string{"reg-a/blobs/x", "reg-a/blobs/y", "reg-a/blobs/z", "blobs/x"} {
		if err := root.WriteAll(ctx, k, []byte(k), nil); err != nil {
			t.Fatal(err)
		}
	}
	d, err := NewBatchDeleter(ctx, scoped)
	if err != nil || d == nil {
		t.Fatalf("NewBatchDeleter on S3: %v, %v", d, err)
	}
	if err := d.Delete(ctx, []string{"blobs/x", "blobs/y", "blobs/missing"}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]bool{"reg-a/blobs/x": false, "reg-a/blobs/y": false, "reg-a/blobs/z": true, "blobs/x": true} {
		if got, err := root.Exists(ctx, k); err != nil || got != want {
			t.Errorf("%s exists: %v (%v), want %v", k, got, err, want)
		}
	}

	file, err := bucket.Open(context.Background(), "file://"+t.TempDir(), bucket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if d, err := NewBatchDeleter(ctx, file); d != nil || err != nil {
		t.Errorf("NewBatchDeleter on a directory: %v, %v; want none", d, err)
	}
}
