package controllers_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/gcreport"
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

// TestGCStatusAndRequest: spec.gc.dryRun reaches the collector's flags;
// the stevedore.dev/gc-request annotation starts one Job per new value,
// owned by the Registry, with or without a schedule; a finished Job's
// report (its container's termination message, as `registryd gc
// --report-file` writes it) fills status.gc.lastRun; the schedule's next
// run is status.gc.nextRunTime; and the operator's metrics export both.
// envtest runs no Job controller or kubelet: the test writes the Job's
// and the pod's status as they would.
func TestGCStatusAndRequest(t *testing.T) {
	ns := newNamespace(t)
	const name = "asked"
	createRegistry(t, ns, name, func(r *v1.Registry) {
		r.Spec.GC = &v1.GCSpec{Schedule: "30 3 * * *", DryRun: true}
	})
	now := time.Now().UTC()
	wantNext := time.Date(now.Year(), now.Month(), now.Day(), 3, 30, 0, 0, time.UTC)
	if !wantNext.After(now) {
		wantNext = wantNext.AddDate(0, 0, 1)
	}
	status := func(check func(st *v1.GCStatus) error) func() error {
		return func() error {
			var reg v1.Registry
			if err := get(&reg, ns, name); err != nil {
				return err
			}
			if reg.Status.GC == nil {
				return errors.New("no status.gc")
			}
			return check(reg.Status.GC)
		}
	}
	eventually(t, "status.gc.nextRunTime", status(func(st *v1.GCStatus) error {
		if st.NextRunTime == nil || !st.NextRunTime.Time.Equal(wantNext) {
			return fmt.Errorf("nextRunTime %v, want %v", st.NextRunTime, wantNext)
		}
		return nil
	}))
	eventually(t, "the CronJob's dry-run and report flags", func() error {
		var cj batchv1.CronJob
		if err := get(&cj, ns, name+"-registry"); err != nil {
			return err
		}
		c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
		if !slices.Contains(c.Args, "--dry-run") || !slices.Contains(c.Args, "--report-file=/dev/termination-log") ||
			c.TerminationMessagePath != "/dev/termination-log" {
			return fmt.Errorf("args %q, termination message path %q", c.Args, c.TerminationMessagePath)
		}
		return nil
	})

	request := func(value string) *batchv1.Job {
		t.Helper()
		updateRegistry(t, ns, name, func(r *v1.Registry) {
			if r.Annotations == nil {
				r.Annotations = map[string]string{}
			}
			r.Annotations[v1.GCRequestAnnotation] = value
		})
		eventually(t, "status.gc.lastRequest "+value, status(func(st *v1.GCStatus) error {
			if st.LastRequest != value {
				return fmt.Errorf("lastRequest %q", st.LastRequest)
			}
			return nil
		}))
		var jobs batchv1.JobList
		if err := env.Client.List(t.Context(), &jobs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		var found []*batchv1.Job
		for i := range jobs.Items {
			if jobs.Items[i].Labels["app.kubernetes.io/name"] == "registryd-gc" && jobs.Items[i].Status.StartTime == nil {
				found = append(found, &jobs.Items[i])
			}
		}
		if len(found) != 1 {
			t.Fatalf("%d new collection Jobs after request %q, want 1", len(found), value)
		}
		job := found[0]
		if err := controlledBy(job, name); err != nil {
			t.Error(err)
		}
		if job.Spec.TTLSecondsAfterFinished == nil || job.Spec.Template.Spec.Containers[0].Args[0] != "gc" ||
			job.Spec.Template.Spec.ServiceAccountName != name+"-registry" {
			t.Errorf("Job %s: ttl %v, args %q, service account %q", job.Name, job.Spec.TTLSecondsAfterFinished,
				job.Spec.Template.Spec.Containers[0].Args, job.Spec.Template.Spec.ServiceAccountName)
		}
		return job
	}
	// finish does what the Job controller and the kubelet would: the pod
	// ends with the collector's report as termination message, the Job
	// completes (or fails).
	finish := func(job *batchv1.Job, start, end time.Time, rep gcreport.Report, ok bool) {
		t.Helper()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: job.Name + "-pod", Namespace: ns, Labels: map[string]string{"batch.kubernetes.io/job-name": job.Name}},
			Spec:       *job.Spec.Template.Spec.DeepCopy(),
		}
		if err := env.Client.Create(t.Context(), pod); err != nil {
			t.Fatal(err)
		}
		exit := int32(0)
		if !ok {
			exit = 1
		}
		pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "gc", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: exit, Message: string(rep.Marshal()), StartedAt: metav1.NewTime(start), FinishedAt: metav1.NewTime(end)}}}}
		if err := env.Client.Status().Update(t.Context(), pod); err != nil {
			t.Fatal(err)
		}
		cond := batchv1.JobComplete
		if !ok {
			cond = batchv1.JobFailed
		}
		job.Status.StartTime = &metav1.Time{Time: start}
		if ok {
			job.Status.CompletionTime = &metav1.Time{Time: end}
			job.Status.Succeeded = 1
		} else {
			job.Status.Failed = 1
		}
		// The API server wants a Job's terminal condition after these two.
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(end)},
			{Type: cond, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(end)},
		}
		if !ok {
			job.Status.Conditions[0].Type = batchv1.JobFailureTarget
		}
		if err := env.Client.Status().Update(t.Context(), job); err != nil {
			t.Fatal(err)
		}
	}

	first := request("one")
	eventually(t, "the GarbageCollectionRequested Event", wantEvent(ns, name, "GarbageCollectionRequested"))
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	finish(first, start, start.Add(12*time.Second), gcreport.Report{DryRun: true, DeletedObjects: 9, Manifests: 2, Blobs: 5,
		ReclaimedBytes: 4096, StoredBlobs: 7, StoredBytes: 123456, Message: "gc: would delete …"}, true)
	eventually(t, "status.gc.lastRun of the asked-for run", status(func(st *v1.GCStatus) error {
		r := st.LastRun
		if r == nil || r.Job != first.Name || !r.Succeeded || !r.DryRun || r.DeletedObjects != 9 || r.Manifests != 2 || r.Blobs != 5 ||
			r.ReclaimedBytes != 4096 || r.StoredBlobs != 7 || r.StoredBytes != 123456 || r.StartTime == nil || r.CompletionTime == nil || r.CompletionTime.Sub(r.StartTime.Time) != 12*time.Second {
			return fmt.Errorf("lastRun %+v", r)
		}
		return nil
	}))
	metric := func(family string) (float64, error) {
		mfs, err := operator.metrics.Gather()
		if err != nil {
			return 0, err
		}
		for _, mf := range mfs {
			if mf.GetName() != family {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "namespace" && l.GetValue() == ns {
						return m.GetGauge().GetValue(), nil
					}
				}
			}
		}
		return 0, fmt.Errorf("no %s for namespace %s", family, ns)
	}
	for family, want := range map[string]float64{
		"stevedore_gc_last_run_reclaimed_bytes":   4096,
		"stevedore_gc_last_run_deleted_objects":   9,
		"stevedore_gc_last_run_success":           1,
		"stevedore_gc_last_run_duration_seconds":  12,
		"stevedore_gc_next_run_timestamp_seconds": float64(wantNext.Unix()),
	} {
		eventually(t, family, func() error {
			got, err := metric(family)
			if err == nil && got != want {
				err = fmt.Errorf("%s = %v, want %v", family, got, want)
			}
			return err
		})
	}

	// The same value again starts nothing; a new one, without a schedule,
	// starts a second Job, whose failure is the last run.
	updateRegistry(t, ns, name, func(r *v1.Registry) { r.Spec.GC = &v1.GCSpec{} })
	eventually(t, "no nextRunTime without a schedule", status(func(st *v1.GCStatus) error {
		if st.NextRunTime != nil {
			return fmt.Errorf("nextRunTime %v", st.NextRunTime)
		}
		return nil
	}))
	second := request("two")
	if second.Name == first.Name {
		t.Fatalf("request two reused Job %s", first.Name)
	}
	finish(second, start.Add(time.Minute), start.Add(2*time.Minute), gcreport.Report{Failed: true, Message: "taking the bucket lock: held"}, false)
	eventually(t, "status.gc.lastRun of the failed run", status(func(st *v1.GCStatus) error {
		if r := st.LastRun; r == nil || r.Job != second.Name || r.Succeeded || !strings.Contains(r.Message, "bucket lock") {
			return fmt.Errorf("lastRun %+v", r)
		}
		return nil
	}))
	eventually(t, "stevedore_gc_last_run_success 0", func() error {
		if got, err := metric("stevedore_gc_last_run_success"); err != nil || got != 0 {
			return fmt.Errorf("%v %v", got, err)
		}
		return nil
	})
}
