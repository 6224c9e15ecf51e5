package tags_test

import (
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"

	"github.com/stevedore-dev/stevedore/registryd/tags"
	"github.com/stevedore-dev/stevedore/registryd/tags/tagstoretest"
)

func TestBucket(t *testing.T) {
	tagstoretest.Run(t, func(t *testing.T) tags.Store {
		b := memblob.OpenBucket(nil)
		t.Cleanup(func() { _ = b.Close() })
		return tags.NewBucket(b)
	})
}

// TestBucketFile runs the same suite on file:// buckets, where tag reads
// go straight to the files once the bucket's directory is known.
func TestBucketFile(t *testing.T) {
	for _, prefix := range []string{"", "team/registry/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			tagstoretest.Run(t, func(t *testing.T) tags.Store {
				var b *blob.Bucket
				b, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Close() })
				if prefix != "" {
					b = blob.PrefixedBucket(b, prefix)
				}
				return tags.NewBucket(b)
			})
		})
	}
}
