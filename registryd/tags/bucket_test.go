package tags_test

import (
	"testing"

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
