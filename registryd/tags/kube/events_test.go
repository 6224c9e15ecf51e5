package kube_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/registryd/tags/kube"
)

// recordedEvents keeps what the store asks its EventRecorder to record.
type recordedEvents struct {
	mu     sync.Mutex
	events []string // "<object> <reason>: <note>"
}

func (r *recordedEvents) Eventf(regarding, _ runtime.Object, _, reason, _, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s: %s", regarding.(*v1.Repository).Name, reason, fmt.Sprintf(note, args...)))
}

func (r *recordedEvents) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

// TestOneEventPerNewRepository: a push that creates its repository records
// one Event (RepositoryCreated, naming the tag), not two; later pushes
// record TagPushed; a push by digest that creates one records
// RepositoryCreated. Concurrent first pushes from two replicas record one
// RepositoryCreated between them.
func TestOneEventPerNewRepository(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t, nil)
	rec := &recordedEvents{}
	withEvents := func(o *kube.Options) { o.Events = rec }
	j := journal(t)
	a := replicaWith(t, env.Config, reg, j, withEvents)
	b := replicaWith(t, env.Config, reg, j, withEvents)
	obj := func(path string) string { return v1.RepositoryObjectName(reg.Name, path) }

	steps := []struct {
		name string
		do   func() error
		want []string
	}{
		{"first push creates", func() error { return a.Put(ctx, "team/app", "v1", desc("one")) },
			[]string{obj("team/app") + " RepositoryCreated: created on first push to team/app: tag v1 now points at " + desc("one").Digest.String()}},
		{"second push", func() error { return b.Put(ctx, "team/app", "v2", desc("two")) },
			[]string{obj("team/app") + " TagPushed: tag v2 now points at " + desc("two").Digest.String()}},
		{"push by digest creates", func() error { return a.EnsureRepository(ctx, "team/bydigest") },
			[]string{obj("team/bydigest") + " RepositoryCreated: created on first push to team/bydigest (by digest)"}},
		{"push by digest into an existing one", func() error { return b.EnsureRepository(ctx, "team/app") }, nil},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := rec.take(); strings.Join(got, "\n") != strings.Join(st.want, "\n") {
			t.Errorf("%s: events\n%s\nwant\n%s", st.name, strings.Join(got, "\n"), strings.Join(st.want, "\n"))
		}
	}

	// Racing first pushes from both replicas: one creates, one finds it.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			errs[i] = s.Put(ctx, "team/race", fmt.Sprintf("t%d", i), desc(fmt.Sprint(i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("racing push %d: %v", i, err)
		}
	}
	created, pushed := 0, 0
	for _, e := range rec.take() {
		switch {
		case strings.Contains(e, " RepositoryCreated: "):
			created++
		case strings.Contains(e, " TagPushed: "):
			pushed++
		}
	}
	if created != 1 || created+pushed != len(errs) {
		t.Errorf("racing first pushes: %d RepositoryCreated and %d TagPushed, want 1 and %d", created, pushed, len(errs)-1)
	}
}
