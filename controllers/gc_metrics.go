package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// gcCollector exports each Registry's status.gc as Prometheus gauges, read
// from the operator's cache at scrape time (as kube-state-metrics does):
// no state kept, and no series left behind by a deleted Registry.
type gcCollector struct {
	reader                                            client.Reader
	last, next, duration, success, deleted, reclaimed *prometheus.Desc
}

func newGCCollector(reader client.Reader) *gcCollector {
	labels := []string{"namespace", "registry"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("stevedore_gc_"+name, help, labels, nil)
	}
	return &gcCollector{
		reader:    reader,
		last:      d("last_run_completion_timestamp_seconds", "When the Registry's last garbage collection finished."),
		next:      d("next_run_timestamp_seconds", "When spec.gc.schedule next starts a collection."),
		duration:  d("last_run_duration_seconds", "How long the last collection took."),
		success:   d("last_run_success", "1 if the last collection succeeded, 0 if it failed."),
		deleted:   d("last_run_deleted_objects", "Bucket objects the last collection deleted (or would have, in dry-run)."),
		reclaimed: d("last_run_reclaimed_bytes", "Bytes the last collection freed (or would have, in dry-run)."),
	}
}

func (c *gcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.last, c.next, c.duration, c.success, c.deleted, c.reclaimed} {
		ch <- d
	}
}

func (c *gcCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var regs v1.RegistryList
	if err := c.reader.List(ctx, &regs); err != nil {
		ch <- prometheus.NewInvalidMetric(c.last, err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, reg *v1.Registry) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, reg.Namespace, reg.Name)
	}
	for i := range regs.Items {
		reg := &regs.Items[i]
		st := reg.Status.GC
		if st == nil {
			continue
		}
		if st.NextRunTime != nil {
			gauge(c.next, float64(st.NextRunTime.Unix()), reg)
		}
		run := st.LastRun
		if run == nil {
			continue
		}
		if run.CompletionTime != nil {
			gauge(c.last, float64(run.CompletionTime.Unix()), reg)
			if run.StartTime != nil {
				gauge(c.duration, run.CompletionTime.Sub(run.StartTime.Time).Seconds(), reg)
			}
		}
		ok := 0.0
		if run.Succeeded {
			ok = 1
		}
		gauge(c.success, ok, reg)
		gauge(c.deleted, float64(run.DeletedObjects), reg)
		gauge(c.reclaimed, float64(run.ReclaimedBytes), reg)
	}
}
