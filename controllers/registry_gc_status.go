package controllers

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/robfig/cron/v3"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/internal/gcreport"
)

// Event reasons of the collector, as the operator sees it.
const reasonGCRequested = "GarbageCollectionRequested"

// requestedGCTTL is how long a finished Job asked for by annotation stays;
// status.gc.lastRun keeps its outcome after.
const requestedGCTTL = 24 * 60 * 60

// labelJobName is the label the Job controller puts on a Job's pods.
const labelJobName = "batch.kubernetes.io/job-name"

// reconcileGCRequest starts one collection for each new value of the
// stevedore.dev/gc-request annotation, schedule or not.
func (r *RegistryReconciler) reconcileGCRequest(ctx context.Context, s *registryScope) error {
	want := s.reg.Annotations[v1.GCRequestAnnotation]
	if want == "" || (s.status.GC != nil && s.status.GC.LastRequest == want) {
		return nil
	}
	name := requestedGCJobName(s.reg, want)
	var job batchv1.Job
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: s.reg.Namespace, Name: name}, &job)
	switch {
	case apierrors.IsNotFound(err):
		// Created once: a Job's template cannot change, so it is never
		// applied again for the same request.
		ac := batchv1ac.Job(name, s.reg.Namespace).
			WithLabels(gcLabels(s.reg)).
			WithOwnerReferences(ownerRef(s.reg)).
			WithSpec(r.gcJobSpec(s.reg).WithTTLSecondsAfterFinished(requestedGCTTL))
		if err := r.Apply(ctx, ac, client.FieldOwner(fieldManager), client.ForceOwnership); err != nil {
			return fmt.Errorf("creating the collection Job %s: %w", name, err)
		}
		r.Recorder.Eventf(s.reg, nil, corev1.EventTypeNormal, reasonGCRequested, "Collect",
			"%s=%q: started Job %s", v1.GCRequestAnnotation, want, name)
	case err != nil:
		return fmt.Errorf("reading the collection Job %s: %w", name, err)
	}
	gcStatus(s).LastRequest = want
	return nil
}

// requestedGCJobName is the same for the same request, so a retried
// reconcile finds the Job it made; at most 63 characters, as the Job
// controller's pod label needs.
func requestedGCJobName(reg *v1.Registry, request string) string {
	h := fnv.New32a()
	h.Write([]byte(request))
	prefix := childName(reg)
	if len(prefix) > 50 {
		prefix = prefix[:50]
	}
	return fmt.Sprintf("%s-gc-%08x", prefix, h.Sum32())
}

// reconcileGCStatus fills status.gc: the next scheduled run, and the last
// finished collection with the counts its container left as termination
// message (gcreport). The pods are read only when a new Job has finished.
func (r *RegistryReconciler) reconcileGCStatus(ctx context.Context, s *registryScope) error {
	if gc := s.reg.Spec.GC; gc != nil && gc.Schedule != "" {
		if sched, err := cron.ParseStandard(gc.Schedule); err == nil {
			next := metav1.NewTime(sched.Next(time.Now().UTC()))
			gcStatus(s).NextRunTime = &next
		}
	} else if s.status.GC != nil {
		s.status.GC.NextRunTime = nil
	}
	var jobs batchv1.JobList
	if err := r.List(ctx, &jobs, client.InNamespace(s.reg.Namespace), client.MatchingLabels(gcLabels(s.reg))); err != nil {
		return fmt.Errorf("listing collection Jobs: %w", err)
	}
	var last *batchv1.Job
	var lastEnd time.Time
	var lastOK bool
	for i := range jobs.Items {
		job := &jobs.Items[i]
		if end, ok, finished := jobFinished(job); finished && (last == nil || end.After(lastEnd)) {
			last, lastEnd, lastOK = job, end, ok
		}
	}
	if last == nil || (s.status.GC != nil && s.status.GC.LastRun != nil && s.status.GC.LastRun.Job == last.Name) {
		return nil
	}
	run, err := r.gcRun(ctx, last, lastEnd, lastOK)
	if err != nil {
		return err
	}
	gcStatus(s).LastRun = run
	return nil
}

// gcStatus is s.status.GC, made when absent.
func gcStatus(s *registryScope) *v1.GCStatus {
	if s.status.GC == nil {
		s.status.GC = &v1.GCStatus{}
	}
	return s.status.GC
}

// jobFinished says whether a Job completed or failed for good, when, and
// whether it completed.
func jobFinished(job *batchv1.Job) (end time.Time, succeeded, finished bool) {
	for _, c := range job.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			end = c.LastTransitionTime.Time
			if job.Status.CompletionTime != nil {
				end = job.Status.CompletionTime.Time
			}
			return end, c.Type == batchv1.JobComplete, true
		}
	}
	return time.Time{}, false, false
}

// gcRun is a finished Job's outcome (jobFinished), with the report its
// last pod left.
func (r *RegistryReconciler) gcRun(ctx context.Context, job *batchv1.Job, end time.Time, succeeded bool) (*v1.GCRun, error) {
	completed := metav1.NewTime(end)
	run := &v1.GCRun{Job: job.Name, Succeeded: succeeded, StartTime: job.Status.StartTime, CompletionTime: &completed}
	// Past the cache: the operator caches no pods.
	var pods corev1.PodList
	if err := r.APIReader.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabels{labelJobName: job.Name}); err != nil {
		return nil, fmt.Errorf("listing the pods of Job %s: %w", job.Name, err)
	}
	var msg string
	var msgAt time.Time
	for _, pod := range pods.Items {
		for _, cs := range pod.Status.ContainerStatuses {
			if t := cs.State.Terminated; cs.Name == "gc" && t != nil && t.Message != "" && !t.FinishedAt.Time.Before(msgAt) {
				msg, msgAt = t.Message, t.FinishedAt.Time
			}
		}
	}
	if msg == "" {
		run.Message = "no report: the collector's pod is gone or left none"
		return run, nil
	}
	rep, err := gcreport.Parse(msg)
	if err != nil {
		run.Message = err.Error()
		return run, nil
	}
	run.DryRun, run.DeletedObjects, run.Manifests, run.Blobs, run.ReclaimedBytes, run.Message =
		rep.DryRun, rep.DeletedObjects, rep.Manifests, rep.Blobs, rep.ReclaimedBytes, rep.Message
	run.StoredBlobs, run.StoredBytes = rep.StoredBlobs, rep.StoredBytes
	if rep.Failed {
		run.Succeeded = false
	}
	return run, nil
}
