package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Recounted is the usage after a recount that found bytes and tags at
// now: the writes in flight stay reserved, marked recounted (a push that
// settles then adds what the count may already hold, usage over, never
// under; a delete frees nothing), and reservations older than
// UsageReservationStale, of writes that died, go. u may be nil (a first
// count).
func (u *QuotaUsage) Recounted(bytes, tags int64, now metav1.Time) *QuotaUsage {
	out := &QuotaUsage{Bytes: bytes, Tags: tags, CountedAt: &now}
	if u == nil {
		return out
	}
	for _, p := range u.Pending {
		if now.Sub(p.At.Time) < UsageReservationStale {
			p.Recounted = true
			out.Pending = append(out.Pending, p)
		}
	}
	return out
}

// KeepsUsage reports whether repo's status.usage is kept: its tags are
// split over TagShards, and it has a quota or reg a tag limit.
func (repo *Repository) KeepsUsage(reg *Registry) bool {
	if !repo.Status.TagsSplit {
		return false
	}
	q := repo.Spec.Quota
	return q != nil && (q.Bytes != nil || q.Tags != nil) || reg != nil && reg.Spec.Limits.MaxTagsPerRepository > 0
}
