// Command storage-servers starts versitygw (S3), Azurite and fake-gcs-server
// on 127.0.0.1, each with the bucket "stevedore", for shell scripts
// (hack/conformance.sh, hack/bench-storage.sh) through
// hack/storage-servers.sh start. Once all answer it writes DIR/env, lines a
// shell can source:
//
//	STORAGE_URL_S3='s3://stevedore?endpoint=…'   STORAGE_ENV_S3='AWS_ACCESS_KEY_ID=… …'
//
// (likewise _AZURE and _GCS), then runs until interrupted and stops them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
)

func main() {
	dir := flag.String("dir", "", "directory for the servers' data, logs and the env file")
	kinds := flag.String("kinds", "s3 azure gcs", "servers to start")
	flag.Parse()
	if err := run(*dir, strings.Fields(*kinds)); err != nil {
		fmt.Fprintln(os.Stderr, "storage-servers:", err)
		os.Exit(1)
	}
}

func run(dir string, kinds []string) error {
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin := storageservers.BinDir()
	var env strings.Builder
	for _, k := range kinds {
		kind := storageservers.Kind(k)
		s, err := storageservers.New(bin, kind, filepath.Join(dir, k))
		if err != nil {
			return err
		}
		if err := s.Start(ctx); err != nil {
			return err
		}
		defer s.Stop()
		name := strings.ToUpper(k)
		fmt.Fprintf(&env, "STORAGE_URL_%s='%s'\nSTORAGE_ENV_%s='%s'\n", name, s.URL, name, strings.Join(s.EnvList(), " "))
		fmt.Fprintf(os.Stderr, "%s on %s: %s\n", k, s.Addr, s.URL)
	}
	// Written last and renamed into place: its presence means "all up".
	tmp := filepath.Join(dir, "env.tmp")
	if err := os.WriteFile(tmp, []byte(env.String()), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "env")); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
