// Package storage maps registry content onto one gocloud.dev/blob bucket,
// following the bucket layout of DESIGN.md:
//
//	blobs/<alg>/<hex>                                    content (blobs and manifests)
//	repos/<name>/_layers/<alg>/<hex>                     link: blob belongs to repository
//	repos/<name>/_manifests/<alg>/<hex>                  link: manifest belongs to repository
//	repos/<name>/_referrers/<alg>/<subject>/<alg>/<hex>  descriptor JSON of a referrer
//	repos/<name>/_tags/<tag>                             tag journal
//	uploads/<id>/…                                       parts of an upload in progress
//
// Callers validate names, tags and digests (package reference) before they
// reach these functions; the functions only join strings.
package storage

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

const (
	blobsPrefix   = "blobs/"
	reposPrefix   = "repos/"
	uploadsPrefix = "uploads/"
)

func digestPath(d digest.Digest) string {
	return d.Algorithm().String() + "/" + d.Encoded()
}

// BlobKey is where the content with digest d lives.
func BlobKey(d digest.Digest) string { return blobsPrefix + digestPath(d) }

// RepoPrefix is the prefix of everything belonging to repository name.
func RepoPrefix(name string) string { return reposPrefix + name + "/" }

func layerLinkKey(name string, d digest.Digest) string {
	return RepoPrefix(name) + "_layers/" + digestPath(d)
}

func manifestLinkKey(name string, d digest.Digest) string {
	return RepoPrefix(name) + "_manifests/" + digestPath(d)
}

func referrersPrefix(name string, subject digest.Digest) string {
	return RepoPrefix(name) + "_referrers/" + digestPath(subject) + "/"
}

func referrerKey(name string, subject, d digest.Digest) string {
	return referrersPrefix(name, subject) + digestPath(d)
}

// TagsPrefix is the prefix of the tag journal of repository name.
func TagsPrefix(name string) string { return RepoPrefix(name) + "_tags/" }

// TagKey is the journal object of one tag.
func TagKey(name, tag string) string { return TagsPrefix(name) + tag }

// UploadPrefix is the prefix of every object of upload id.
func UploadPrefix(id string) string { return uploadsPrefix + id + "/" }

// UploadMarkerKey exists while upload id is in progress; its absence means
// the upload was finished, cancelled or never started.
func UploadMarkerKey(id string) string { return UploadPrefix(id) + "startedat" }

// UploadStateKey holds the signed state after the latest part, so a client
// holding a stale Location (a lost response) can find where the upload is.
func UploadStateKey(id string) string { return UploadPrefix(id) + "state" }

// UploadPartKey holds part n (0-based) of upload id. Zero padding keeps the
// parts in listing order.
func UploadPartKey(id string, n int) string { return fmt.Sprintf("%spart-%08d", UploadPrefix(id), n) }
