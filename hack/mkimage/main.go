// Command mkimage packs static binaries into Stevedore's OCI image (see
// internal/image) and writes it as an OCI layout, a tarball for
// `ctr images import`, and/or pushes the index to a registry. It prints the
// index digest. `make image` runs it; so does the real-node suite.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stevedore-dev/stevedore/internal/image"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	binDir := flag.String("bin-dir", "bin", "directory holding <os>_<arch>/<binary> for each platform")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	binaries := flag.String("binaries", "manager,registryd,stevedore-credential-provider", "binaries copied to /<name>")
	entrypoint := flag.String("entrypoint", "/manager", "the config's entrypoint")
	caCerts := flag.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle for /etc/ssl/certs; empty for none")
	version := flag.String("version", "dev", "org.opencontainers.image.version label")
	ref := flag.String("ref", "ghcr.io/stevedore-dev/stevedore:dev", "the image's name in the tarball and for --push")
	layoutDir := flag.String("layout", "", "write the index as an OCI layout here")
	tarballPath := flag.String("tarball", "", "write the image of --tarball-platform here, for `ctr images import`")
	tarballPlatform := flag.String("tarball-platform", "linux/amd64", "the platform --tarball holds")
	push := flag.Bool("push", false, "push the index to --ref (plain HTTP for localhost and 127.0.0.0/8)")
	flag.Parse()

	opts := image.Options{
		Entrypoint: []string{*entrypoint},
		Labels: map[string]string{
			"org.opencontainers.image.source":  "https://github.com/stevedore-dev/stevedore",
			"org.opencontainers.image.version": *version,
		},
	}
	if *caCerts != "" {
		b, err := os.ReadFile(*caCerts)
		if err != nil {
			return err
		}
		opts.CACerts = b
	}
	for _, pl := range strings.Split(*platforms, ",") {
		osName, arch, ok := strings.Cut(pl, "/")
		if !ok {
			return fmt.Errorf("platform %q is not os/arch", pl)
		}
		p := image.Platform{OS: osName, Arch: arch, Binaries: map[string]string{}}
		for _, b := range strings.Split(*binaries, ",") {
			p.Binaries["/"+b] = filepath.Join(*binDir, osName+"_"+arch, b)
		}
		opts.Platforms = append(opts.Platforms, p)
	}
	idx, err := image.Build(opts)
	if err != nil {
		return err
	}
	r, err := name.ParseReference(*ref, name.Insecure)
	if err != nil {
		return err
	}
	if *layoutDir != "" {
		if err := os.RemoveAll(*layoutDir); err != nil {
			return err
		}
		p, err := layout.Write(*layoutDir, empty.Index)
		if err != nil {
			return err
		}
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": r.String(),
		})); err != nil {
			return err
		}
	}
	if *tarballPath != "" {
		osName, arch, _ := strings.Cut(*tarballPlatform, "/")
		img, err := platformImage(idx, osName, arch)
		if err != nil {
			return err
		}
		if err := tarball.WriteToFile(*tarballPath, r, img); err != nil {
			return err
		}
	}
	if *push {
		if err := remote.WriteIndex(r, idx); err != nil {
			return err
		}
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Println(d)
	return nil
}

func platformImage(idx v1.ImageIndex, osName, arch string) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.OS == osName && d.Platform.Architecture == arch {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("the index has no %s/%s image", osName, arch)
}
