package bucket

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stevedore-dev/stevedore/internal/testutil/storageservers"
	"github.com/stevedore-dev/stevedore/registryd/storage"
)

// TestHungBackend: a backend that accepts connections and never answers
// fails requests after ResponseHeaderTimeout (and the drivers' retries),
// as a transient error registryd turns into 503 — not a request held open
// forever.
func TestHungBackend(t *testing.T) {
	old := ResponseHeaderTimeout
	ResponseHeaderTimeout = 200 * time.Millisecond
	t.Cleanup(func() { ResponseHeaderTimeout = old })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }() // read, never answer
		}
	}()
	addr := ln.Addr().String()
	for _, tt := range []struct {
		name, url string
		env       map[string]string
	}{
		{"s3", "s3://b?endpoint=http://" + addr + "&use_path_style=true",
			map[string]string{"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}},
		{"azure", "azblob://c?protocol=http&domain=" + addr,
			map[string]string{"AZURE_STORAGE_ACCOUNT": storageservers.AzureAccount, "AZURE_STORAGE_KEY": storageservers.AzureKey}},
		{"gcs", "gs://b", map[string]string{"STORAGE_EMULATOR_HOST": addr}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			b, err := Open(ctx, tt.url, Options{Env: tt.env})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			start := time.Now()
			err = Probe(ctx, b)
			took := time.Since(start)
			t.Logf("probe failed after %v: %v", took.Round(time.Millisecond), err)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("probe of a hung backend: %v after %v; want a timeout well before the test's own deadline", err, took)
			}
			if !errors.Is(storage.Classify(err, "probe"), storage.ErrUnavailable) {
				t.Fatalf("a timeout is not classified transient: %v", err)
			}
		})
	}
}
