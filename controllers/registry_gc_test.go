package controllers_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestGCCronJobFollowsSpec: spec.gc.schedule makes a CronJob owned by the
// Registry running `registryd gc` as registryd (its ServiceAccount, image
// and storage flags); changing spec.gc changes it, removing the schedule or
// spec.gc removes it.
func TestGCCronJobFollowsSpec(t *testing.T) {
	ns := newNamespace(t)
	const name = "collected"
	createRegistry(t, ns, name, func(r *v1.Registry) {
		r.Spec.Storage.Prefix = "tenant/"
		r.Spec.GC = &v1.GCSpec{Schedule: "0 3 * * *", GracePeriod: &metav1.Duration{Duration: 30 * time.Minute}}
	})
	job := name + "-registry"
	cronJob := func(check func(cj *batchv1.CronJob) error) func() error {
		return func() error {
			var cj batchv1.CronJob
			if err := get(&cj, ns, job); err != nil {
				return err
			}
			return check(&cj)
		}
	}
	eventually(t, "the CronJob", cronJob(func(cj *batchv1.CronJob) error {
		if err := controlledBy(cj, name); err != nil {
			return err
		}
		pod := cj.Spec.JobTemplate.Spec.Template.Spec
		c := pod.Containers[0]
		switch {
		case cj.Spec.Schedule != "0 3 * * *":
			return fmt.Errorf("schedule %q", cj.Spec.Schedule)
		case cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent:
			return fmt.Errorf("concurrency %q", cj.Spec.ConcurrencyPolicy)
		case cj.Spec.JobTemplate.Spec.Template.Labels["app.kubernetes.io/name"] != "registryd-gc":
			return fmt.Errorf("pod labels %v: the Service would select the collector", cj.Spec.JobTemplate.Spec.Template.Labels)
		case pod.ServiceAccountName != name+"-registry":
			return fmt.Errorf("service account %q, want registryd's", pod.ServiceAccountName)
		case c.Args[0] != "gc" || !slices.Contains(c.Args, "--grace=30m0s") || !slices.Contains(c.Args, "--storage-prefix=tenant/") ||
			!slices.Contains(c.Args, "--registry="+name) || slices.Contains(c.Args, "--delete-untagged"):
			return fmt.Errorf("args %q", c.Args)
		}
		return nil
	}))
	updateRegistry(t, ns, name, func(r *v1.Registry) {
		r.Spec.GC.Schedule = "*/10 * * * *"
		r.Spec.GC.DeleteUntagged = true
	})
	eventually(t, "the CronJob updated", cronJob(func(cj *batchv1.CronJob) error {
		if args := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Args; cj.Spec.Schedule != "*/10 * * * *" || !slices.Contains(args, "--delete-untagged") {
			return fmt.Errorf("schedule %q args %q", cj.Spec.Schedule, args)
		}
		return nil
	}))
	for _, tt := range []struct {
		name   string
		mutate func(*v1.Registry)
	}{
		{"schedule emptied", func(r *v1.Registry) { r.Spec.GC.Schedule = "" }},
		{"spec.gc removed", func(r *v1.Registry) { r.Spec.GC = nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			updateRegistry(t, ns, name, func(r *v1.Registry) {
				r.Spec.GC = &v1.GCSpec{Schedule: "0 4 * * *"}
			})
			eventually(t, "the CronJob back", cronJob(func(cj *batchv1.CronJob) error {
				if cj.Spec.Schedule != "0 4 * * *" {
					return fmt.Errorf("schedule %q", cj.Spec.Schedule)
				}
				return nil
			}))
			updateRegistry(t, ns, name, tt.mutate)
			eventually(t, "the CronJob gone", func() error {
				var cj batchv1.CronJob
				err := get(&cj, ns, job)
				if apierrors.IsNotFound(err) {
					return nil
				}
				return errors.Join(err, fmt.Errorf("CronJob %s still there", job))
			})
		})
	}
}
