// Package manifest validates pushed manifests and extracts what the
// registry must check or index: referenced blobs and manifests, subject,
// artifact type. It never changes the bytes: manifests are stored as sent.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stevedore-dev/stevedore/registryd/reference"
)

// Docker media types (the OCI ones come from image-spec).
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerForeignLayer = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("invalid manifest")

// Manifest is what the registry needs to know about a valid manifest.
type Manifest struct {
	MediaType    string
	ArtifactType string
	// Blobs must exist in the repository (config and distributable layers).
	Blobs []ocispec.Descriptor
	// Manifests must exist in the repository (children of an index).
	Manifests   []ocispec.Descriptor
	Subject     *ocispec.Descriptor
	Annotations map[string]string
}

// IsIndex reports whether mediaType is a list of manifests.
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == MediaTypeDockerManifestList
}

func supported(mediaType string) bool {
	switch mediaType {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList:
		return true
	}
	return false
}

// raw holds the union of the fields of every supported manifest type;
// pointers and RawMessage tell "absent" from "empty".
type raw struct {
	SchemaVersion *int                  `json:"schemaVersion"`
	MediaType     string                `json:"mediaType"`
	ArtifactType  string                `json:"artifactType"`
	Config        *ocispec.Descriptor   `json:"config"`
	Layers        []ocispec.Descriptor  `json:"layers"`
	Manifests     *[]ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor   `json:"subject"`
	Annotations   map[string]string     `json:"annotations"`
}

// Parse validates content sent with the Content-Type contentType.
func Parse(contentType string, content []byte) (*Manifest, error) {
	var m raw
	dec := json.NewDecoder(bytes.NewReader(content))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after JSON", ErrInvalid)
	}
	if m.SchemaVersion == nil || *m.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: schemaVersion must be 2", ErrInvalid)
	}
	mt, err := resolveMediaType(contentType, &m)
	if err != nil {
		return nil, err
	}
	out := &Manifest{MediaType: mt, ArtifactType: m.ArtifactType, Subject: m.Subject, Annotations: m.Annotations}
	if m.Subject != nil {
		if err := checkDescriptor("subject", *m.Subject); err != nil {
			return nil, err
		}
	}
	if IsIndex(mt) {
		return out, parseIndex(&m, out)
	}
	return out, parseImage(&m, out)
}

// resolveMediaType reconciles the Content-Type header with the mediaType
// field: when both are given they must agree; when neither is, the shape
// of the content decides (OCI types only: Docker ones always carry it).
func resolveMediaType(contentType string, m *raw) (string, error) {
	ct := ""
	if contentType != "" {
		parsed, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return "", fmt.Errorf("%w: Content-Type %q: %w", ErrInvalid, contentType, err)
		}
		ct = parsed
	}
	mt := m.MediaType
	switch {
	case mt != "" && ct != "" && mt != ct:
		return "", fmt.Errorf("%w: Content-Type %q does not match mediaType %q", ErrInvalid, ct, mt)
	case mt == "" && ct != "":
		mt = ct
	case mt == "" && m.Manifests != nil:
		mt = ocispec.MediaTypeImageIndex
	case mt == "":
		mt = ocispec.MediaTypeImageManifest
	}
	if !supported(mt) {
		return "", fmt.Errorf("%w: unsupported media type %q", ErrInvalid, mt)
	}
	return mt, nil
}

func parseImage(m *raw, out *Manifest) error {
	if m.Manifests != nil {
		return fmt.Errorf("%w: %s must not have manifests", ErrInvalid, out.MediaType)
	}
	if m.Config == nil {
		return fmt.Errorf("%w: %s requires a config", ErrInvalid, out.MediaType)
	}
	if err := checkDescriptor("config", *m.Config); err != nil {
		return err
	}
	out.Blobs = append(out.Blobs, *m.Config)
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("layers[%d]", i), l); err != nil {
			return err
		}
		if !external(l) {
			out.Blobs = append(out.Blobs, l)
		}
	}
	if out.ArtifactType == "" && out.MediaType == ocispec.MediaTypeImageManifest {
		// The image-spec's rule for artifacts without artifactType.
		out.ArtifactType = m.Config.MediaType
	}
	return nil
}

func parseIndex(m *raw, out *Manifest) error {
	if m.Config != nil || m.Layers != nil {
		return fmt.Errorf("%w: %s must not have config or layers", ErrInvalid, out.MediaType)
	}
	if m.Manifests == nil {
		return fmt.Errorf("%w: %s requires manifests", ErrInvalid, out.MediaType)
	}
	for i, d := range *m.Manifests {
		if err := checkDescriptor(fmt.Sprintf("manifests[%d]", i), d); err != nil {
			return err
		}
		out.Manifests = append(out.Manifests, d)
	}
	return nil
}

// external layers are by design not pushed to registries: nondistributable
// media types, Docker foreign layers, and layers fetched from their URLs.
func external(d ocispec.Descriptor) bool {
	return strings.Contains(d.MediaType, ".nondistributable.") ||
		d.MediaType == mediaTypeDockerForeignLayer || len(d.URLs) > 0
}

func checkDescriptor(field string, d ocispec.Descriptor) error {
	if d.MediaType == "" {
		return fmt.Errorf("%w: %s: mediaType is required", ErrInvalid, field)
	}
	if _, _, err := mime.ParseMediaType(d.MediaType); err != nil {
		return fmt.Errorf("%w: %s: mediaType %q: %w", ErrInvalid, field, d.MediaType, err)
	}
	if _, err := reference.ParseDigest(d.Digest.String()); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, field, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("%w: %s: negative size", ErrInvalid, field)
	}
	return nil
}
