package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/stevedore-dev/stevedore/internal/bucket"
	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// runScrub is `registryd scrub --storage URL`: it reads the whole bucket
// (storage.Scrub), prints what it found and exits 1 when anything is
// wrong. Credentials come from the environment, as for serving.
func runScrub(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("scrub", flag.ContinueOnError)
	storageURL := fs.String("storage", "", "gocloud.dev/blob bucket URL to check")
	prefix := fs.String("storage-prefix", "", "key prefix inside the bucket")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *storageURL == "" {
		fmt.Fprintln(os.Stderr, "registryd scrub: --storage is required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := bucket.Open(ctx, fileDefaults(*storageURL), bucket.Options{Prefix: *prefix})
	if err != nil {
		fmt.Fprintln(os.Stderr, "registryd scrub:", err)
		return 1
	}
	defer b.Close()
	rep, err := storage.Scrub(ctx, b)
	for _, p := range rep.Problems() {
		fmt.Fprintln(stdout, p)
	}
	fmt.Fprintf(stdout, "scrub: %d blobs (%d bytes), %d manifest links, %d tags; %d corrupt blobs, %d dangling links, %d dangling tags\n",
		rep.Blobs, rep.Bytes, rep.Manifests, rep.Tags, len(rep.Corrupt), len(rep.DanglingLinks), len(rep.DanglingTags))
	if err != nil {
		fmt.Fprintln(os.Stderr, "registryd scrub:", err)
		return 1
	}
	if !rep.OK() {
		return 1
	}
	return 0
}
