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
	"strconv"
	"strings"

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

// UploadPartKey holds part n (0-based) of upload id. tag is a random name
// the server picks for this write and prev the tag of part n-1 ("" for the
// first part), so every write goes to a key of its own that no racing
// request can overwrite, and the signed upload state (which names the last
// tag) identifies exactly one chain of parts. Zero padding keeps the parts
// in listing order.
func UploadPartKey(id string, n int, prev, tag string) string {
	return UploadPartPrefix(id, n, prev) + tag
}

// UploadPartPrefix is the prefix of every part n of upload id that follows
// the part tagged prev: racing writes of the same part share it.
func UploadPartPrefix(id string, n int, prev string) string {
	if prev == "" {
		prev = "0"
	}
	return fmt.Sprintf("%spart-%08d.%s.", UploadPrefix(id), n, prev)
}

// UploadPartsPrefix is the prefix of every part of upload id.
func UploadPartsPrefix(id string) string { return UploadPrefix(id) + "part-" }

// ParseUploadPartKey splits a key of UploadPartKey into its part number
// and tags; ok is false for any other key.
func ParseUploadPartKey(id, key string) (n int, prev, tag string, ok bool) {
	rest, found := strings.CutPrefix(key, UploadPartsPrefix(id))
	if !found {
		return 0, "", "", false
	}
	fields := strings.Split(rest, ".")
	if len(fields) != 3 || len(fields[0]) != 8 || fields[2] == "" {
		return 0, "", "", false
	}
	n, err := strconv.Atoi(fields[0])
	if err != nil || n < 0 {
		return 0, "", "", false
	}
	prev = fields[1]
	if prev == "0" {
		prev = ""
	}
	return n, prev, fields[2], true
}
