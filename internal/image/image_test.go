package image

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func testOptions(t *testing.T, content string) Options {
	dir := t.TempDir()
	var platforms []Platform
	for _, arch := range []string{"amd64", "arm64"} {
		bins := map[string]string{}
		for _, b := range []string{"manager", "registryd"} {
			p := filepath.Join(dir, arch+"-"+b)
			if err := os.WriteFile(p, []byte(content+arch+b), 0o755); err != nil {
				t.Fatal(err)
			}
			bins["/"+b] = p
		}
		platforms = append(platforms, Platform{OS: "linux", Arch: arch, Binaries: bins})
	}
	return Options{Platforms: platforms, Entrypoint: []string{"/manager"}, CACerts: []byte("pem"),
		Labels: map[string]string{"org.opencontainers.image.version": "1.2.3"}}
}

func TestBuildIsReproducible(t *testing.T) {
	a, err := Build(testOptions(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(testOptions(t, "x")) // other files, same bytes, other mtimes
	if err != nil {
		t.Fatal(err)
	}
	c, err := Build(testOptions(t, "y"))
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	dc, _ := c.Digest()
	if da != db {
		t.Errorf("same binaries, two digests: %s and %s", da, db)
	}
	if da == dc {
		t.Errorf("other binaries, same digest %s", da)
	}
}

func TestBuildContents(t *testing.T) {
	idx, err := Build(testOptions(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 {
		t.Fatalf("%d manifests, want 2", len(m.Manifests))
	}
	for _, d := range m.Manifests {
		t.Run(d.Platform.Architecture, func(t *testing.T) {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Architecture != d.Platform.Architecture || cf.OS != "linux" {
				t.Errorf("config platform %s/%s, index says %s", cf.OS, cf.Architecture, d.Platform.Architecture)
			}
			if cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/manager" {
				t.Errorf("user %q entrypoint %v", cf.Config.User, cf.Config.Entrypoint)
			}
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("layers: %d, %v", len(layers), err)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			files := map[string]*tar.Header{}
			tr := tar.NewReader(rc)
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if !h.ModTime.Equal(Epoch) {
					t.Errorf("%s has mtime %s", h.Name, h.ModTime)
				}
				files[h.Name] = h
			}
			for name, mode := range map[string]int64{"manager": 0o755, "registryd": 0o755, "etc/passwd": 0o644,
				"etc/ssl/certs/ca-certificates.crt": 0o644, "tmp/": 0o1777} {
				h, ok := files[name]
				if !ok {
					t.Errorf("%s missing", name)
					continue
				}
				if h.Mode != mode {
					t.Errorf("%s mode %o, want %o", name, h.Mode, mode)
				}
			}
		})
	}
}
