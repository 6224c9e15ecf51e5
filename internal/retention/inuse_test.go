package retention_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/stevedore-dev/stevedore/internal/retention"
)

// TestInUse: image references as pods and templates hold them protect
// their tag or digest under the repository path, whatever the host.
func TestInUse(t *testing.T) {
	const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		ref        string
		path       string
		tag, digst string
	}{
		{"reg.team.svc:5000/team/app:v1", "team/app", "v1", ""},
		{"localhost/team/app:v1", "team/app", "v1", ""},
		{"127.0.0.1:5000/app@" + dg, "app", "", dg},
		{"registry.example/team/app:v2@" + dg, "team/app", "v2", dg},
		{"team/app", "team/app", "latest", ""},
		{"docker-pullable://reg.svc:5000/team/app@" + dg, "team/app", "", dg},
		{"reg.svc:5000/deep/nested/app:1.0", "deep/nested/app", "1.0", ""},
	}
	for _, tc := range tests {
		t.Run(tc.ref, func(t *testing.T) {
			var u retention.InUse
			u.AddImage(tc.ref)
			p := u.Protection(tc.path)
			if tc.tag != "" && !p.Tags[tc.tag] {
				t.Errorf("tag %s of %s not protected: %v", tc.tag, tc.path, p)
			}
			if tc.digst != "" && !p.Digests[tc.digst] {
				t.Errorf("digest of %s not protected: %v", tc.path, p)
			}
			if len(p.Tags)+len(p.Digests) == 0 {
				t.Errorf("nothing protected under %s", tc.path)
			}
		})
	}
	var u retention.InUse
	u.AddPod(&corev1.Pod{
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Image: "r:5000/init:v1"}},
			Containers:     []corev1.Container{{Image: "r:5000/app:moving"}},
		},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{ImageID: "r:5000/app@" + dg}}},
	})
	if p := u.Protection("app"); !p.Tags["moving"] || !p.Digests[dg] {
		t.Errorf("pod: app protection %v, want tag moving and the digest it runs", p)
	}
	if p := u.Protection("init"); !p.Tags["v1"] {
		t.Errorf("pod: init container not protected: %v", p)
	}
}
