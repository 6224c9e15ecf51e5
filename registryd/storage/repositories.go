package storage

import (
	"container/heap"
	"context"
	"errors"
	"io"
	"strings"

	"gocloud.dev/blob"
)

// RepositoryExists reports whether repository name itself holds anything:
// a layer, manifest, referrer or tag, not merely a repository nested under
// it (repos/org/ holds repos/org/app/). One listing of at most two entries
// under "repos/<name>/_", the children only a repository has: repository
// path components cannot start with "_", so nested repositories never
// match, and the delimiter keeps the listing from descending into them.
func (s *Store) RepositoryExists(ctx context.Context, name string) (bool, error) {
	prefix := RepoPrefix(name) + "_"
	objs, _, err := s.bucket.ListPage(ctx, blob.FirstPageToken, 2, &blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	if err != nil && !errors.Is(err, io.EOF) {
		return false, classify(err, prefix)
	}
	for _, o := range objs {
		// A tombstone alone marks a repository that was deleted.
		if o.Key != TombstoneKey(name) {
			return true, nil
		}
	}
	return false, nil
}

// Repositories returns every repository name in lexical order. A directory
// under repos/ is a repository when it holds one of the "_" children;
// repository path components cannot start with "_", so there is no clash.
func (s *Store) Repositories(ctx context.Context) ([]string, error) {
	return s.RepositoriesPage(ctx, "", 0)
}

// RepositoriesPage returns at most n repositories (n <= 0: all) whose
// names sort after last, in lexical order, listing only what the page
// needs: the directories on the way to last are listed from there on
// (StartAfter on S3 and GCS), and each directory's listing stops after
// n+1 children and resumes only if the page needs more.
//
// A depth-first walk is not lexical order: "a-b" sorts before "a/b" but
// after "a", while the bucket lists "repos/a-b/" before "repos/a/" ('-'
// and '.' sort before '/'). So the walk is a merge: a heap of places
// keyed by the smallest name that can still come out of them.
func (s *Store) RepositoriesPage(ctx context.Context, last string, n int) ([]string, error) {
	limit := 0
	if n > 0 {
		limit = n + 1
	}
	h := &catalogHeap{{}} // repos/ itself
	var out []string
	for h.Len() > 0 && (n <= 0 || len(out) < n) {
		node := heap.Pop(h).(catalogNode)
		children, isRepo, more, err := s.catalogChildren(ctx, node, last, limit)
		if err != nil {
			return nil, err
		}
		if !node.resume && isRepo && node.dir > last {
			out = append(out, node.dir)
		}
		for _, c := range children {
			if full := joinRepo(node.dir, c); !beforeSubtree(full, last) {
				heap.Push(h, catalogNode{key: full, dir: full})
			}
		}
		if more {
			tail := children[len(children)-1]
			heap.Push(h, catalogNode{key: joinRepo(node.dir, prefixBound(tail)), dir: node.dir, resume: true, after: tail})
		}
	}
	return out, nil
}

// catalogNode is a directory still to list, or the rest of one's listing.
type catalogNode struct {
	key    string // no repository below this node sorts before key
	dir    string // the directory's path under repos/ ("" for repos/)
	resume bool   // list dir's children after the child named after
	after  string
}

type catalogHeap []catalogNode

func (h catalogHeap) Len() int           { return len(h) }
func (h catalogHeap) Less(i, j int) bool { return h[i].key < h[j].key }
func (h catalogHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *catalogHeap) Push(x any)        { *h = append(*h, x.(catalogNode)) }
func (h *catalogHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// catalogChildren lists node's child directories (not the "_" ones) in
// bucket order, at most limit of them (0: all), and whether node.dir is a
// repository itself; more reports that the listing stopped at limit.
func (s *Store) catalogChildren(ctx context.Context, node catalogNode, last string, limit int) (children []string, isRepo, more bool, err error) {
	prefix := reposPrefix
	if node.dir != "" {
		prefix = RepoPrefix(node.dir)
	}
	skipTo := node.after // children <= skipTo are not listed again
	opts := &blob.ListOptions{Prefix: prefix, Delimiter: "/"}
	switch {
	case node.resume:
		opts.BeforeList = StartAfter(node.after+"/", s.listStart)
	case last != "" && strings.HasPrefix(last, strings.TrimPrefix(prefix, reposPrefix)):
		// On the way to last: its component at this level and everything
		// sorting after it ("x/", "x-y/"); the children before it hold
		// only names before last.
		rest := strings.TrimPrefix(last, strings.TrimPrefix(prefix, reposPrefix))
		component, _, _ := strings.Cut(rest, "/")
		opts.BeforeList = StartAfter(component, s.listStart)
	}
	err = Each(ctx, s.bucket, opts, func(obj *blob.ListObject) (bool, error) {
		if !obj.IsDir {
			return true, nil
		}
		name := strings.TrimSuffix(strings.TrimPrefix(obj.Key, prefix), "/")
		if strings.HasPrefix(name, "_") {
			isRepo = true
			return true, nil
		}
		if node.resume && name+"/" <= skipTo+"/" {
			// Listed before (drivers without StartAfter list from the
			// start): compared as the bucket orders them, by key.
			return true, nil
		}
		if limit > 0 && len(children) == limit {
			more = true
			return false, nil
		}
		children = append(children, name)
		return true, nil
	})
	if err != nil {
		return nil, false, false, err
	}
	if more && !isRepo && !node.resume && node.dir > last && len(children) > 0 && children[len(children)-1] < "_" {
		// The listing stopped among children that sort before the "_"
		// ones (digits): ask for those directly.
		isRepo, err = s.RepositoryExists(ctx, node.dir)
	}
	return children, isRepo, more, err
}

func joinRepo(dir, child string) string {
	if dir == "" {
		return child
	}
	return dir + "/" + child
}

// beforeSubtree reports whether every repository at or below full sorts
// before (or is) last, so the walk need not open it.
func beforeSubtree(full, last string) bool {
	return last != "" && full+"/" < last && !strings.HasPrefix(last, full+"/")
}

// prefixBound is the smallest name a child listed after child (in bucket
// order, where "c/" is the key) can have: the bucket lists "x/" after
// "x-y/", so a child that is a prefix of this one ending before a '-' or
// '.' may still come.
func prefixBound(child string) string {
	if i := strings.IndexAny(child, "-."); i > 0 {
		return child[:i]
	}
	return child
}
