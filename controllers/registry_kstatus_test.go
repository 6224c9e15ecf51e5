package controllers_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
)

// TestKstatusAgreesWithKubectlWait: for a Ready, an InProgress and Failed
// Registries, kstatus (what Flux, Argo CD and `kpt live status` read) and
// `kubectl wait --for=condition=Ready` say the same thing: only the Ready
// one is Current, and only for it does kubectl wait return.
func TestKstatusAgreesWithKubectlWait(t *testing.T) {
	// Mostly waits on kubectl; reads only its own namespace.
	t.Parallel()
	ns := newNamespace(t)
	ctx := context.Background()
	// Credentials without keys: the probe fails before any request.
	noKeys := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "no-keys", Namespace: ns}, StringData: map[string]string{"AWS_REGION": "us-east-1"}}
	if err := env.Client.Create(ctx, noKeys); err != nil {
		t.Fatal(err)
	}
	const s3URL = "s3://kstatus?region=us-east-1&endpoint=http://127.0.0.1:1&use_path_style=true"
	onS3 := func(secret string) func(*v1.Registry) {
		return func(r *v1.Registry) {
			r.Spec.Storage.URL = s3URL
			r.Spec.Storage.SecretRef = &corev1.LocalObjectReference{Name: secret}
		}
	}
	kubeconfig, err := env.WriteKubeconfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		create func(*v1.Registry)
		// rollout is the Deployment's Progressing reason, as its controller
		// (absent from envtest) would set it.
		rollout string
		// change is a spec change made once the Registry is Ready.
		change func(*v1.Registry)
		want   status.Status
	}{
		{name: "ready", rollout: "NewReplicaSetAvailable", want: status.CurrentStatus},
		{name: "rolling-out", rollout: "ReplicaSetUpdated", want: status.InProgressStatus},
		{name: "pods-not-started", want: status.InProgressStatus},
		{name: "secret-missing", create: onS3("absent"), rollout: "NewReplicaSetAvailable", want: status.FailedStatus},
		{name: "probe-failing", create: onS3("no-keys"), rollout: "NewReplicaSetAvailable", want: status.FailedStatus},
		{name: "spec-change-to-missing-secret", rollout: "NewReplicaSetAvailable", change: onS3("absent"), want: status.FailedStatus},
		// The API server refuses the Deployment: the reconcile fails.
		{name: "spec-change-refused", rollout: "NewReplicaSetAvailable", want: status.FailedStatus,
			change: func(r *v1.Registry) { r.Spec.PodAnnotations = map[string]string{"not a key!": "x"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			createRegistry(t, ns, tc.name, tc.create)
			if tc.rollout != "" {
				setDeploymentProgress(t, ns, tc.name+"-registry", tc.rollout)
			}
			if tc.change != nil {
				eventually(t, "Current before the change", func() error { return kstatusIs(ctx, ns, tc.name, status.CurrentStatus) })
				// The operator writes status meanwhile: its resourceVersion moves.
				err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
					var reg v1.Registry
					if err := get(&reg, ns, tc.name); err != nil {
						return err
					}
					tc.change(&reg)
					return env.Client.Update(ctx, &reg)
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "kstatus", func() error { return kstatusIs(ctx, ns, tc.name, tc.want) })

			out, err := exec.Command(filepath.Join(env.AssetsDir(), "kubectl"), "--kubeconfig", kubeconfig, "-n", ns,
				"wait", "--for=condition=Ready", "--timeout=3s", "registry/"+tc.name).CombinedOutput()
			if ready := err == nil; ready != (tc.want == status.CurrentStatus) {
				t.Errorf("kstatus %s, but kubectl wait --for=condition=Ready: %v\n%s", tc.want, err, out)
			}
		})
	}
}

// kstatusIs computes the Registry's kstatus from the API server's copy.
func kstatusIs(ctx context.Context, ns, name string, want status.Status) error {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(v1.GroupVersion.WithKind("Registry"))
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		return err
	}
	res, err := status.Compute(u)
	if err != nil {
		return err
	}
	if res.Status != want {
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		gen, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
		return fmt.Errorf("kstatus %s (%s), want %s; generation %d, observedGeneration %d, conditions %v",
			res.Status, res.Message, want, u.GetGeneration(), gen, conds)
	}
	return nil
}
