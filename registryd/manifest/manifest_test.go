package manifest

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	hexA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func image(extra string) string {
	return fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":2},"layers":[{"mediaType":%q,"digest":%q,"size":5}]%s}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, hexA, ocispec.MediaTypeImageLayerGzip, hexB, extra)
}

func TestParse(t *testing.T) {
	index := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":%q,"digest":%q,"size":3}]}`, ocispec.MediaTypeImageManifest, hexA)
	nondist := fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":"x/y","digest":%q,"size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":%q,"size":5}]}`, hexA, hexB)
	tests := []struct {
		name, contentType, body string
		wantType                string
		wantBlobs, wantChildren int
		wantErr                 bool
	}{
		{"oci image", ocispec.MediaTypeImageManifest, image(""), ocispec.MediaTypeImageManifest, 2, 0, false},
		{"oci image without content type", "", image(""), ocispec.MediaTypeImageManifest, 2, 0, false},
		{"content type with parameters", ocispec.MediaTypeImageManifest + "; charset=utf-8", image(""), ocispec.MediaTypeImageManifest, 2, 0, false},
		{"index inferred", "", index, ocispec.MediaTypeImageIndex, 0, 1, false},
		{"index declared", ocispec.MediaTypeImageIndex, index, ocispec.MediaTypeImageIndex, 0, 1, false},
		{"nondistributable layer not required", "", nondist, ocispec.MediaTypeImageManifest, 1, 0, false},
		{"content type mismatch", ocispec.MediaTypeImageIndex, image(""), "", 0, 0, true},
		{"index declared as image", ocispec.MediaTypeImageManifest, index, "", 0, 0, true},
		{"unsupported type", "application/vnd.docker.distribution.manifest.v1+prettyjws", `{"schemaVersion":2}`, "", 0, 0, true},
		{"schema version 1", "", strings.Replace(image(""), `"schemaVersion":2`, `"schemaVersion":1`, 1), "", 0, 0, true},
		{"no config", ocispec.MediaTypeImageManifest, `{"schemaVersion":2,"layers":[]}`, "", 0, 0, true},
		{"bad layer digest", "", strings.Replace(image(""), hexB, "sha256:zz", 1), "", 0, 0, true},
		{"negative size", "", strings.Replace(image(""), `"size":5`, `"size":-1`, 1), "", 0, 0, true},
		{"not JSON", "", `{"schemaVersion":`, "", 0, 0, true},
		{"trailing data", "", image("") + "{}", "", 0, 0, true},
		{"bad subject", "", image(`,"subject":{"mediaType":"x/y","digest":"nope","size":1}`), "", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(tt.contentType, []byte(tt.body))
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.MediaType != tt.wantType || len(m.Blobs) != tt.wantBlobs || len(m.Manifests) != tt.wantChildren {
				t.Fatalf("Parse = %+v", m)
			}
		})
	}
}

func TestArtifactTypeFallsBackToConfig(t *testing.T) {
	m, err := Parse("", []byte(image(`,"subject":{"mediaType":"x/y","digest":"`+hexB+`","size":1}`)))
	if err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != ocispec.MediaTypeImageConfig || m.Subject == nil {
		t.Fatalf("ArtifactType %q, subject %v", m.ArtifactType, m.Subject)
	}
}

// FuzzParse checks that accepted manifests only name valid descriptors,
// and that Parse never panics.
func FuzzParse(f *testing.F) {
	f.Add(ocispec.MediaTypeImageManifest, image(""))
	f.Add("", fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"a/b","digest":%q,"size":3}]}`, hexA))
	f.Add(MediaTypeDockerManifestList, `{"schemaVersion":2,"mediaType":"`+MediaTypeDockerManifestList+`","manifests":[]}`)
	f.Add("", `{"schemaVersion":2,"config":null}`)
	f.Fuzz(func(t *testing.T, contentType, body string) {
		m, err := Parse(contentType, []byte(body))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not wrapping ErrInvalid: %v", err)
			}
			return
		}
		if !supported(m.MediaType) {
			t.Fatalf("accepted unsupported media type %q", m.MediaType)
		}
		for _, d := range append(append([]ocispec.Descriptor{}, m.Blobs...), m.Manifests...) {
			if err := d.Digest.Validate(); err != nil || d.Size < 0 {
				t.Fatalf("accepted bad descriptor %+v", d)
			}
		}
		if IsIndex(m.MediaType) && len(m.Blobs) > 0 {
			t.Fatalf("index with blobs: %+v", m)
		}
	})
}
