package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// writeLayerTar writes a small tarball for crane append.
func writeLayerTar(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content))}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(content))
	}
	_ = tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func lines(s string) []string { return strings.Fields(s) }

// TestCrane: push an image, copy, tag, list, delete.
func TestCrane(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	reg := startRegistryd(t, "file://"+t.TempDir())
	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"hello.txt": "hello from crane\n"})
	src, dst := reg.host+"/crane/src", reg.host+"/crane/dst"

	run(t, home, crane, "append", "--insecure", "-f", layer, "-t", src+":v1")
	dig := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", src+":v1"))
	run(t, home, crane, "copy", "--insecure", src+":v1", dst+":v1")
	if got := strings.TrimSpace(run(t, home, crane, "digest", "--insecure", dst+":v1")); got != dig {
		t.Fatalf("copied digest %s, source %s", got, dig)
	}
	run(t, home, crane, "tag", "--insecure", dst+":v1", "v2")
	if tags := lines(run(t, home, crane, "ls", "--insecure", dst)); !slices.Equal(tags, []string{"v1", "v2"}) {
		t.Fatalf("crane ls = %v", tags)
	}
	if repos := lines(run(t, home, crane, "catalog", "--insecure", reg.host)); !slices.Equal(repos, []string{"crane/dst", "crane/src"}) {
		t.Fatalf("crane catalog = %v", repos)
	}
	// The layer comes back intact.
	out := filepath.Join(home, "out.tar")
	run(t, home, crane, "export", "--insecure", dst+":v2", out)
	if b, _ := os.ReadFile(out); !bytes.Contains(b, []byte("hello from crane")) {
		t.Fatal("exported filesystem lacks the pushed file")
	}
	run(t, home, crane, "delete", "--insecure", dst+"@"+dig)
	if tags := lines(run(t, home, crane, "ls", "--insecure", dst)); len(tags) != 0 {
		t.Fatalf("tags after deleting the manifest: %v", tags)
	}
}

// TestOras: push an artifact, attach a referrer, discover it, pull back.
func TestOras(t *testing.T) {
	t.Parallel()
	oras := testutil.Client(t, "oras")
	reg := startRegistryd(t, "mem://")
	home := t.TempDir()
	work := filepath.Join(home, "work")
	_ = os.MkdirAll(work, 0o755)
	if err := os.WriteFile(filepath.Join(work, "artifact.txt"), []byte("artifact body\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "sig.txt"), []byte("signature\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/oras/art:v1"
	runIn(t, work, home, oras, "push", "--plain-http", "--artifact-type", "application/vnd.stevedore.test", ref, "artifact.txt:text/plain")
	runIn(t, work, home, oras, "attach", "--plain-http", "--artifact-type", "application/vnd.stevedore.sig", ref, "sig.txt:text/plain")
	var tree struct {
		Referrers []struct {
			ArtifactType string `json:"artifactType"`
		} `json:"referrers"`
	}
	out := run(t, home, oras, "discover", "--plain-http", "--format", "json", ref)
	if err := json.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("oras discover output: %v\n%s", err, out)
	}
	if len(tree.Referrers) != 1 || tree.Referrers[0].ArtifactType != "application/vnd.stevedore.sig" {
		t.Fatalf("oras discover = %s", out)
	}
	pulled := filepath.Join(home, "pulled")
	run(t, home, oras, "pull", "--plain-http", "-o", pulled, ref)
	if b, err := os.ReadFile(filepath.Join(pulled, "artifact.txt")); err != nil || string(b) != "artifact body\n" {
		t.Fatalf("pulled artifact %q, %v", b, err)
	}
}

// TestRegctl: image copy, manifest get, tag ls.
func TestRegctl(t *testing.T) {
	t.Parallel()
	regctl := testutil.Client(t, "regctl")
	crane := testutil.Client(t, "crane")
	reg := startRegistryd(t, "file://"+t.TempDir())
	home := t.TempDir()
	layer := filepath.Join(home, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"a.txt": "regctl\n"})
	run(t, home, crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/regctl/src:v1")

	run(t, home, regctl, "registry", "set", "--tls", "disabled", reg.host)
	run(t, home, regctl, "image", "copy", reg.host+"/regctl/src:v1", reg.host+"/regctl/dst:copied")
	raw := run(t, home, regctl, "manifest", "get", "--format", "raw-body", reg.host+"/regctl/dst:copied")
	var m ocispec.Manifest
	if err := json.Unmarshal([]byte(raw), &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest get: %v\n%s", err, raw)
	}
	srcRaw := run(t, home, regctl, "manifest", "get", "--format", "raw-body", reg.host+"/regctl/src:v1")
	if digest.FromString(raw) != digest.FromString(srcRaw) {
		t.Fatal("copied manifest differs from the source")
	}
	if tags := lines(run(t, home, regctl, "tag", "ls", reg.host+"/regctl/dst")); !slices.Equal(tags, []string{"copied"}) {
		t.Fatalf("regctl tag ls = %v", tags)
	}
}

// writeLayout writes a one-image OCI layout and returns its layer.
func writeLayout(t *testing.T, dir string) ocispec.Descriptor {
	t.Helper()
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	var layerBuf bytes.Buffer
	tw := tar.NewWriter(&layerBuf)
	_ = tw.WriteHeader(&tar.Header{Name: "skopeo.txt", Mode: 0o644, Size: 7})
	_, _ = tw.Write([]byte("skopeo\n"))
	_ = tw.Close()
	diffID := digest.FromBytes(layerBuf.Bytes())
	// Compressed already, so skopeo pushes the layer as is.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(layerBuf.Bytes())
	_ = zw.Close()
	layer := put(gz.Bytes())
	layer.MediaType = ocispec.MediaTypeImageLayerGzip
	cfg := put([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffID.String() + `"]}}`))
	cfg.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md := put(mb)
	md.MediaType = ocispec.MediaTypeImageManifest
	md.Annotations = map[string]string{ocispec.AnnotationRefName: "v1"}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}}
	idx.SchemaVersion = 2
	ib, _ := json.Marshal(idx)
	_ = os.WriteFile(filepath.Join(dir, "index.json"), ib, 0o644)
	_ = os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return layer
}

// TestSkopeo copies an OCI layout into the registry and back out. skopeo
// re-serializes the manifest, so the layer is what must survive unchanged.
func TestSkopeo(t *testing.T) {
	t.Parallel()
	skopeo := testutil.Client(t, "skopeo")
	reg := startRegistryd(t, "file://"+t.TempDir())
	home := t.TempDir()
	in, out := filepath.Join(home, "in"), filepath.Join(home, "out")
	layer := writeLayout(t, in)
	run(t, home, skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", "oci:"+in+":v1", "docker://"+reg.host+"/skopeo/img:v1")
	get := do(t, "GET", reg.url()+"/v2/skopeo/img/manifests/v1", nil, map[string]string{"Accept": ocispec.MediaTypeImageManifest}, 200)
	var m ocispec.Manifest
	if err := json.NewDecoder(get.Body).Decode(&m); err != nil || len(m.Layers) != 1 || m.Layers[0].Digest != layer.Digest {
		t.Fatalf("pushed manifest %+v (%v), want layer %s", m, err, layer.Digest)
	}
	run(t, home, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+reg.host+"/skopeo/img:v1", "oci:"+out+":v1")
	want, _ := os.ReadFile(filepath.Join(in, "blobs", "sha256", layer.Digest.Encoded()))
	got, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", layer.Digest.Encoded()))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("layer in the copied-out layout: %v (identical: %v)", err, bytes.Equal(got, want))
	}
	var idx ocispec.Index
	b, err := os.ReadFile(filepath.Join(out, "index.json"))
	if err != nil || json.Unmarshal(b, &idx) != nil || len(idx.Manifests) != 1 {
		t.Fatalf("copied-out layout index: %s (%v)", b, err)
	}
	run(t, home, skopeo, "--insecure-policy", "inspect", "--tls-verify=false", "docker://"+reg.host+"/skopeo/img:v1")
}
