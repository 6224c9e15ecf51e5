package main

// The storage backends a Registry's storage.url may name. file:// and
// mem:// come with internal/bucket.
import (
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
)
