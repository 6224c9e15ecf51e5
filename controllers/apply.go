package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// applyConfiguration is what every client-go apply configuration offers.
type applyConfiguration interface {
	runtime.ApplyConfiguration
	GetName() *string
	GetNamespace() *string
}

// kindOf names an apply configuration's kind for error messages.
func kindOf(obj applyConfiguration) string {
	return strings.TrimSuffix(reflect.TypeOf(obj).Elem().Name(), "ApplyConfiguration")
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// convert copies between a typed object and its apply configuration (or back):
// both have the same JSON form.
func convert(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("converting %T: %w", in, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("converting %T to %T: %w", in, out, err)
	}
	return nil
}

// mustConvert is convert for API types, whose JSON forms always match.
func mustConvert(in, out any) {
	if err := convert(in, out); err != nil {
		panic(err)
	}
}

// apply server-side applies a child and leaves the API server's answer in
// into. A child whose cached copy is as this operator last left it, with
// the same apply configuration, is not applied again: a reconcile that
// changes nothing sends nothing. Someone else's change to the child shows as
// a new generation (or resourceVersion) in the cache, and is then undone.
func (r *RegistryReconciler) apply(ctx context.Context, ac applyConfiguration, into client.Object) error {
	body, err := json.Marshal(ac)
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", kindOf(ac), ptrString(ac.GetName()), err)
	}
	key := client.ObjectKey{Namespace: ptrString(ac.GetNamespace()), Name: ptrString(ac.GetName())}
	want := appliedRecord{kind: kindOf(ac), key: key, config: sha256.Sum256(body)}
	err = r.Get(ctx, key, into)
	switch {
	case err == nil:
		if r.applied.matches(want, into) {
			return nil
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("reading %s %s: %w", want.kind, key.Name, err)
	}
	if err := r.Apply(ctx, ac, client.FieldOwner(fieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s %s: %w", want.kind, key.Name, err)
	}
	// The applied configuration now holds the API server's answer.
	if err := convert(ac, into); err != nil {
		return err
	}
	r.applied.record(want, into)
	return nil
}

// appliedChildren remembers, per child, the apply configuration last sent and
// the state of the object the API server answered with.
type appliedChildren struct{ m sync.Map }

type appliedRecord struct {
	kind   string
	key    client.ObjectKey
	config [sha256.Size]byte
}

// childState is what changes when anyone changes the object: its generation
// and metadata where there is a generation (so status updates by other
// controllers do not count), else its resourceVersion.
func childState(obj client.Object) string {
	if obj.GetGeneration() == 0 {
		return "rv:" + obj.GetResourceVersion()
	}
	// JSON, not fmt: owner references hold pointers.
	meta, _ := json.Marshal([]any{obj.GetLabels(), obj.GetAnnotations(), obj.GetOwnerReferences()})
	return fmt.Sprintf("gen:%d:%s", obj.GetGeneration(), meta)
}

func (a *appliedChildren) record(rec appliedRecord, obj client.Object) {
	a.m.Store(rec, childState(obj))
}

func (a *appliedChildren) matches(rec appliedRecord, obj client.Object) bool {
	state, ok := a.m.Load(rec)
	return ok && state == childState(obj)
}

// forget drops the records of a Registry's children once it is gone.
func (a *appliedChildren) forget(namespace, registry string) {
	reg := &v1.Registry{}
	reg.Namespace, reg.Name = namespace, registry
	a.m.Range(func(k, _ any) bool {
		rec := k.(appliedRecord)
		if (rec.key.Namespace == namespace && strings.HasPrefix(rec.key.Name, childName(reg))) ||
			(rec.key.Namespace == "" && rec.key.Name == authDelegatorName(reg)) {
			a.m.Delete(k)
		}
		return true
	})
}
