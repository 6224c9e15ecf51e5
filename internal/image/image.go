// Package image builds Stevedore's OCI image from static binaries, with no
// Docker engine and no base image: one layer per platform holding the
// binaries, an /etc/passwd and /etc/group with nonroot (65532) and a CA
// bundle, and a config that runs as 65532. Every timestamp is fixed, so the
// same binaries always give the same digests.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Epoch is every file's and the config's timestamp: reproducibility over a
// build date nobody reads (the version is stamped in the binaries).
var Epoch = time.Unix(0, 0).UTC()

const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
	// User is the numeric user the image runs as; the chart's
	// runAsNonRoot needs a number, not a name.
	User = "65532:65532"
)

// Platform is one image of the index.
type Platform struct {
	OS, Arch string
	// Binaries maps a path in the image (e.g. "/manager") to a file on disk.
	Binaries map[string]string
}

// Options describe the image.
type Options struct {
	Platforms []Platform
	// Entrypoint of every platform's config, e.g. ["/manager"].
	Entrypoint []string
	// CACerts is the PEM bundle written to /etc/ssl/certs/ca-certificates.crt;
	// empty writes none.
	CACerts []byte
	// Labels go into each config (org.opencontainers.image.version, …).
	Labels map[string]string
}

// Build returns the multi-platform index.
func Build(opts Options) (v1.ImageIndex, error) {
	if len(opts.Platforms) == 0 {
		return nil, fmt.Errorf("image: no platforms")
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range opts.Platforms {
		img, err := BuildImage(p, opts)
		if err != nil {
			return nil, fmt.Errorf("image %s/%s: %w", p.OS, p.Arch, err)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Arch}},
		})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

// BuildImage returns one platform's image.
func BuildImage(p Platform, opts Options) (v1.Image, error) {
	layerTar, err := rootfs(p.Binaries, opts.CACerts)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer),
		// Compressed once: the digest, the layout and the tarball each read it.
		tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: Epoch},
			CreatedBy: "stevedore internal/image: static binaries, passwd, CA certificates",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = p.OS, p.Arch
	cf.Created = v1.Time{Time: Epoch}
	cf.Config.Entrypoint = opts.Entrypoint
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.Labels = opts.Labels
	return mutate.ConfigFile(img, cf)
}

// rootfs writes the layer's tar: directories first, entries sorted, owners
// and times fixed.
func rootfs(binaries map[string]string, caCerts []byte) ([]byte, error) {
	type file struct {
		mode int64
		data []byte
		uid  int
	}
	files := map[string]file{
		"/etc/passwd": {mode: 0o644, data: []byte(passwd)},
		"/etc/group":  {mode: 0o644, data: []byte(group)},
	}
	if len(caCerts) > 0 {
		files["/etc/ssl/certs/ca-certificates.crt"] = file{mode: 0o644, data: caCerts}
	}
	for dst, src := range binaries {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[dst] = file{mode: 0o755, data: b}
	}
	dirs := map[string]bool{"/tmp": true, "/home/nonroot": true}
	for p := range files {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		for p := path.Dir(d); p != "/"; p = path.Dir(p) {
			dirs[p] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d+"/")
	}
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n[1:], ModTime: Epoch, Format: tar.FormatPAX}
		switch {
		case n == "/tmp/":
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o1777
		case n == "/home/nonroot/":
			hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid = tar.TypeDir, 0o700, 65532, 65532
		case n[len(n)-1] == '/':
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		default:
			f := files[n]
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, f.mode, int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(files[n].data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
