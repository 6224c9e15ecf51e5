package storage

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	"gocloud.dev/blob/memblob"
)

// TestCopyContent: a one-part upload becomes its blob by a server-side
// copy up to MaxServerSideCopy (S3's single-copy limit) and by streaming
// beyond it; both give the same verified content, and a source that does
// not match the digest never becomes a blob.
func TestCopyContent(t *testing.T) {
	ctx := context.Background()
	content := []byte("one part, copied or streamed")
	d := digest.FromBytes(content)
	for _, tt := range []struct {
		name  string
		limit int64
		src   []byte
		want  error
	}{
		{"server-side copy", 1 << 20, content, nil},
		{"streamed past the copy limit", 4, content, nil},
		{"streamed, wrong content", 4, []byte("something else entirely"), ErrSizeMismatch},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old := MaxServerSideCopy
			MaxServerSideCopy = tt.limit
			t.Cleanup(func() { MaxServerSideCopy = old })
			b := memblob.OpenBucket(nil)
			s := New(b)
			if err := b.WriteAll(ctx, "uploads/x/part", tt.src, nil); err != nil {
				t.Fatal(err)
			}
			err := s.CopyContent(ctx, d, "uploads/x/part", int64(len(content)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("CopyContent: %v, want %v", err, tt.want)
			}
			got, rerr := b.ReadAll(ctx, BlobKey(d))
			switch {
			case tt.want == nil && !bytes.Equal(got, content):
				t.Fatalf("blob holds %q (%v)", got, rerr)
			case tt.want != nil && rerr == nil:
				t.Fatalf("a mismatching source became blob %s", d)
			}
		})
	}
}
