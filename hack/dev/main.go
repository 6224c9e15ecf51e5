// Command dev brings up Stevedore on this machine with no cluster: a real
// kube-apiserver + etcd (envtest), the CRDs, the operator, the sample Registry
// and a registryd for it on 127.0.0.1:5000. Ctrl-C stops everything.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	v1 "github.com/stevedore-dev/stevedore/api/v1alpha1"
	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/testenv"
)

type options struct {
	addr      string
	debugAddr string
	devDir    string
	samples   string
	registryd string
	pprof     bool          // registryd serves /debug/pprof/ on debugAddr (the bench's profiles)
	ready     chan struct{} // closed once everything is up (tests)
	out       io.Writer     // the welcome text; stdout by default
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:5000", "where registryd listens")
	flag.StringVar(&o.debugAddr, "debug-addr", "127.0.0.1:5001", "where registryd serves /healthz, /readyz, /metrics")
	flag.StringVar(&o.devDir, "dir", ".dev", "state directory: kubeconfig, bucket, logs")
	flag.StringVar(&o.samples, "samples", "config/samples/stevedore_v1alpha1_registry.yaml", "manifests applied after start")
	flag.StringVar(&o.registryd, "registryd", "bin/registryd", "the registryd binary")
	flag.BoolVar(&o.pprof, "pprof", false, "registryd also serves /debug/pprof/ on -debug-addr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "dev:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	if err := os.MkdirAll(o.devDir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(o.devDir)
	if err != nil {
		return err
	}

	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	kubeconfig, err := env.WriteKubeconfig(abs)
	if err != nil {
		return err
	}
	log.Info("API server up", "kubeconfig", kubeconfig)

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// Its test runs dev twice in one process (a cluster lost and rebuilt).
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return err
	}
	if err := controllers.SetupWithManager(mgr, controllers.Options{RegistrydImage: "stevedore:dev", LocalStorageReachable: true}); err != nil {
		return err
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			log.Error("operator stopped", "err", err)
		}
	}()
	bucketURL := "file://" + filepath.Join(abs, "bucket")
	reg, err := apply(ctx, env.Client, o.samples, bucketURL)
	if err != nil {
		return fmt.Errorf("applying %s: %w", o.samples, err)
	}
	registryd, err := startRegistryd(ctx, env.Client, reg, o, abs, kubeconfig)
	if err != nil {
		return err
	}
	out := o.out
	if out == nil {
		out = os.Stdout
	}
	printWelcome(out, o.addr, o.devDir, reg, strings.Join(gcCommand(registryd.Args, o.registryd, kubeconfig), " "))
	if o.ready != nil {
		close(o.ready)
	}
	<-ctx.Done()
	log.Info("stopping")
	_ = registryd.Process.Signal(os.Interrupt)
	_ = registryd.Wait()
	return nil
}

// apply creates every object of a multi-document YAML file and returns the
// first Registry. A file:// bucket moves into the dev directory, where
// registryd (run as the current user) can write.
func apply(ctx context.Context, c client.Client, path, bucketURL string) (client.ObjectKey, error) {
	var reg client.ObjectKey
	data, err := os.ReadFile(path)
	if err != nil {
		return reg, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return reg, err
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetKind() == "Registry" {
			if url, _, _ := unstructured.NestedString(u.Object, "spec", "storage", "url"); strings.HasPrefix(url, "file://") {
				_ = unstructured.SetNestedField(u.Object, bucketURL, "spec", "storage", "url")
			}
			if reg.Name == "" {
				reg = client.ObjectKeyFromObject(&u)
			}
		}
		if err := c.Create(ctx, &u); err != nil {
			return reg, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
	if reg.Name == "" {
		return reg, fmt.Errorf("%s holds no Registry", path)
	}
	return reg, nil
}

// startRegistryd runs bin/registryd for the Registry with the arguments the
// operator gives its Deployment, bound to local addresses, with the HTTP
// secret the operator created and the dev kubeconfig.
func startRegistryd(ctx context.Context, c client.Client, key client.ObjectKey, o options, dir, kubeconfig string) (*exec.Cmd, error) {
	addr := o.addr
	reg := &v1.Registry{}
	var secret corev1.Secret
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, key, reg); err != nil {
			return false, nil
		}
		err := c.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Name + "-registry-http-secret"}, &secret)
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("the operator did not create the HTTP secret of Registry %s: %w", key, err)
	}
	secretFile := filepath.Join(dir, "http-secret")
	if err := os.WriteFile(secretFile, secret.Data["secret"], 0o600); err != nil {
		return nil, err
	}
	args := localArgs(controllers.RegistrydArgs(reg), map[string]string{
		"--addr": addr, "--debug-addr": o.debugAddr,
		"--http-secret-file": secretFile, "--log-format": "text",
	})
	// No Service routes here, so no endpoints need time to drop it: Ctrl-C
	// stops at once.
	args = append(args, "--kubeconfig="+kubeconfig, "--shutdown-delay=0s")
	if o.pprof {
		args = append(args, "--pprof")
	}
	logf, err := os.Create(filepath.Join(dir, "registryd.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.registryd, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting registryd: %w", err)
	}
	// Ready, not just listening: registryd serves before its Repository
	// cache has synced, and answers tag requests 503 until then. 60 s, as
	// hack/conformance.sh waits for it: a kube conformance row beside two
	// others and the real node's image builds once missed 30 s.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := http.Get("http://" + o.debugAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return nil, fmt.Errorf("registryd did not answer on %s; see %s", addr, logf.Name())
}

// localArgs replaces the value of each flag in override.
func localArgs(args []string, override map[string]string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		name, _, _ := strings.Cut(a, "=")
		if v, ok := override[name]; ok {
			a = name + "=" + v
		}
		out = append(out, a)
	}
	return out
}

// gcCommand is `registryd gc` as the Registry's CronJob would run it, with
// the storage and tag-store flags of the local registryd (whose args are
// serveArgs): with no nodes, no Job runs here.
func gcCommand(serveArgs []string, registryd, kubeconfig string) []string {
	cmd := []string{registryd, "gc"}
	for _, a := range serveArgs {
		for _, flag := range []string{"--storage=", "--storage-prefix=", "--registry=", "--namespace="} {
			if strings.HasPrefix(a, flag) {
				cmd = append(cmd, a)
			}
		}
	}
	return append(cmd, "--kubeconfig="+kubeconfig)
}

func printWelcome(out io.Writer, addr, dir string, reg client.ObjectKey, gc string) {
	fmt.Fprintf(out, `
Stevedore is up: Registry %[3]s/%[4]s, tags in its Repositories' status, blobs in %[2]s/bucket.
  registry:    http://%[1]s  (plain HTTP, auth mode none; log in %[2]s/registryd.log)
  registryd runs beside the API server, as the Deployment would run it; with
  no nodes the Deployment has no pods, so the Registry's READY stays False.

Push an image (crane: go install github.com/google/go-containerregistry/cmd/crane@latest):
  crane append --insecure -f <(tar cf - -C / etc/hostname) -t %[1]s/demo/hello:v1
  crane ls --insecure %[1]s/demo/hello

See the tags the push left in the cluster:
  kubectl --kubeconfig %[2]s/kubeconfig get registries,repositories
  kubectl --kubeconfig %[2]s/kubeconfig get repository -o yaml

Collect garbage while registryd serves (in a cluster spec.gc's CronJob, or the
stevedore.dev/gc-request annotation, runs it; docs/gc.md); its summary
becomes a GarbageCollected Event on the Registry:
  crane delete --insecure %[1]s/demo/hello@$(crane digest --insecure %[1]s/demo/hello:v1)
  %[5]s --grace=0s
  kubectl --kubeconfig %[2]s/kubeconfig describe registry -n %[3]s %[4]s

Ctrl-C stops everything.
`, addr, dir, reg.Namespace, reg.Name, gc)
}
