package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fileLayer is an uncompressed layer whose bytes sit in a file and whose
// digest is known, so neither client spends time hashing before it sends
// (the servers still hash what they receive, and the clients what they pull).
type fileLayer struct {
	path string
	hash v1.Hash
	size int64
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.hash, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.hash, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCIUncompressedLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func (l *fileLayer) layer() (v1.Layer, error) { return partial.CompressedToLayer(l) }

// randomBytes fills p from a seeded ChaCha8 stream: incompressible, cheap,
// and the same on every run.
func randomBytes(seed uint64, p []byte) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), 's', 't', 'e', 'v'})
	_, _ = r.Read(p)
}

// writeRandomBlob writes size random bytes into dir's blobs/sha256/ under
// their digest.
func writeRandomBlob(dir string, seed uint64, size int64) (*fileLayer, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(blobs, "tmp-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(tmp, h), 1<<20)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'l', 'a', 'y', 'e', 'r'})
	if _, err := io.CopyN(w, r, size); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	hexd := hex.EncodeToString(h.Sum(nil))
	path := filepath.Join(blobs, hexd)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	return &fileLayer{path: path, hash: v1.Hash{Algorithm: "sha256", Hex: hexd}, size: size}, nil
}

// warmSource reads every file of the OCI layout in dir once, so that the
// push after it reads its layers from memory, as a CI runner pushing what
// it has just built does. Left alone, the kernel of this project's VMs
// (DAMON reclaim: pages idle for a minute are paged out) drops parts of
// the 1 GiB image between rounds, and the client's own disk reads then
// wait behind the registry's writes (130 stalls in one crane push). Crane
// pushes of 4 × 256 MiB, medians: registryd 610–685 MB/s from a cold
// layout, 781 warm; distribution 503 cold, 556 warm.
func warmSource(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(io.Discard, f)
		return err
	})
}

// bigImage builds, once per run, an OCI layout in dir holding one image of
// n random layers of size bytes each: crane pushes the layout, the Go
// client the same image read from the same files.
func bigImage(dir string, n int, size int64) (v1.Image, error) {
	var layers []v1.Layer
	for i := range n {
		fl, err := writeRandomBlob(dir, uint64(1000+i), size)
		if err != nil {
			return nil, fmt.Errorf("writing layer %d: %w", i, err)
		}
		l, err := fl.layer()
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img, err := ociImage(layers)
	if err != nil {
		return nil, err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, err
	}
	// The layer blobs are already in place, so this writes the config,
	// the manifest and index.json only.
	if err := p.AppendImage(img); err != nil {
		return nil, fmt.Errorf("writing the OCI layout: %w", err)
	}
	return img, nil
}

func ociImage(layers []v1.Layer) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cf)
}

// memLayer is a small in-memory layer for the many-small-images workload.
type memLayer struct {
	data []byte
	hash v1.Hash
}

func newMemLayer(seed uint64, size int) *memLayer {
	p := make([]byte, size)
	randomBytes(seed, p)
	sum := sha256.Sum256(p)
	return &memLayer{data: p, hash: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
}

func (l *memLayer) Digest() (v1.Hash, error)            { return l.hash, nil }
func (l *memLayer) DiffID() (v1.Hash, error)            { return l.hash, nil }
func (l *memLayer) Size() (int64, error)                { return int64(len(l.data)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return types.OCIUncompressedLayer, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.data)), nil
}

// smallImages builds n images of one size-byte random layer each.
func smallImages(n, size int) ([]v1.Image, error) {
	imgs := make([]v1.Image, n)
	for i := range imgs {
		l, err := partial.CompressedToLayer(newMemLayer(uint64(50000+i), size))
		if err != nil {
			return nil, err
		}
		if imgs[i], err = ociImage([]v1.Layer{l}); err != nil {
			return nil, err
		}
	}
	return imgs, nil
}
