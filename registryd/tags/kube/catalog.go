package kube

import (
	"context"
	"slices"
	"sync"

	toolscache "k8s.io/client-go/tools/cache"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// catalogIndex is the sorted set of this Registry's repository paths, kept
// by the Repository informer's events, so a catalog page costs a binary
// search and a copy of the page, not a list, copy and sort of every
// Repository (10,000 of them: each page would touch all 10,000).
type catalogIndex struct {
	mu    sync.RWMutex
	paths []string       // sorted, unique
	count map[string]int // objects that name each path (two may squat one)
}

func newCatalogIndex() *catalogIndex { return &catalogIndex{count: map[string]int{}} }

// catalogPath is the path a Repository contributes to the catalog: none
// while it is being deleted.
func catalogPath(obj any) (string, bool) {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	repo, ok := obj.(*v1.Repository)
	if !ok || !repo.DeletionTimestamp.IsZero() || repo.Spec.Name == "" {
		return "", false
	}
	return repo.Spec.Name, true
}

func (x *catalogIndex) add(path string) {
	x.count[path]++
	if x.count[path] > 1 {
		return
	}
	if i, found := slices.BinarySearch(x.paths, path); !found {
		x.paths = slices.Insert(x.paths, i, path)
	}
}

func (x *catalogIndex) remove(path string) {
	if x.count[path] == 0 {
		return
	}
	x.count[path]--
	if x.count[path] > 0 {
		return
	}
	delete(x.count, path)
	if i, found := slices.BinarySearch(x.paths, path); found {
		x.paths = slices.Delete(x.paths, i, i+1)
	}
}

// handler keeps the index in step with the informer.
func (x *catalogIndex) handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := catalogPath(obj); ok {
				x.mu.Lock()
				x.add(p)
				x.mu.Unlock()
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			op, oldOK := catalogPath(oldObj)
			np, newOK := catalogPath(newObj)
			if oldOK == newOK && op == np {
				return // a status write: the common case, and no change here
			}
			x.mu.Lock()
			defer x.mu.Unlock()
			if oldOK {
				x.remove(op)
			}
			if newOK {
				x.add(np)
			}
		},
		DeleteFunc: func(obj any) {
			if p, ok := catalogPath(obj); ok {
				x.mu.Lock()
				x.remove(p)
				x.mu.Unlock()
			}
		},
	}
}

// page returns up to n paths after last, and whether more follow.
func (x *catalogIndex) page(last string, n int) ([]string, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	i, found := slices.BinarySearch(x.paths, last)
	if found {
		i++
	}
	rest := x.paths[i:]
	if n >= 0 && len(rest) > n {
		return slices.Clone(rest[:n]), true
	}
	return slices.Clone(rest), false
}

// RepositoriesPage is a page of the catalog: up to n paths after last (n <
// 0: all of them), sorted, and whether more follow.
func (s *Store) RepositoriesPage(ctx context.Context, last string, n int) ([]string, bool, error) {
	if err := s.ready(); err != nil {
		return nil, false, err
	}
	page, more := s.catalog.page(last, n)
	return page, more, nil
}

// Repositories lists the paths of this Registry's Repositories, sorted.
func (s *Store) Repositories(ctx context.Context) ([]string, error) {
	all, _, err := s.RepositoriesPage(ctx, "", -1)
	return all, err
}
