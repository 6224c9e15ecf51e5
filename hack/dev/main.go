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
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/go-logr/logr"

	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/testenv"
)

type options struct {
	addr    string
	devDir  string
	samples string
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:5000", "where registryd listens")
	flag.StringVar(&o.devDir, "dir", ".dev", "state directory: kubeconfig, bucket, logs")
	flag.StringVar(&o.samples, "samples", "config/samples/stevedore_v1alpha1_registry.yaml", "manifests applied after start")
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
	kubeconfig := filepath.Join(abs, "kubeconfig")
	if err := writeKubeconfig(env, kubeconfig); err != nil {
		return err
	}
	log.Info("API server up", "kubeconfig", kubeconfig)

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:  env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
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
	if err := apply(ctx, env.Client, o.samples); err != nil {
		return fmt.Errorf("applying %s: %w", o.samples, err)
	}

	registryd, err := startRegistryd(ctx, o.addr, abs)
	if err != nil {
		return err
	}
	printWelcome(o.addr, o.devDir)
	<-ctx.Done()
	log.Info("stopping")
	_ = registryd.Process.Signal(os.Interrupt)
	_ = registryd.Wait()
	return nil
}

func writeKubeconfig(env *testenv.Env, path string) error {
	user, err := env.AddUser(envtest.User{Name: "dev", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding the dev user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, kc, 0o600)
}

// apply creates every object of a multi-document YAML file.
func apply(ctx context.Context, c client.Client, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := c.Create(ctx, &u); err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
}

// startRegistryd runs bin/registryd as the sample Registry's Deployment would,
// with its bucket under the dev directory.
func startRegistryd(ctx context.Context, addr, dir string) (*exec.Cmd, error) {
	bucket := filepath.Join(dir, "bucket")
	if err := os.MkdirAll(bucket, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registryd.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("bin/registryd", "--addr", addr, "--storage", "file://"+bucket)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting registryd: %w", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return cmd, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return nil, fmt.Errorf("registryd did not answer on %s; see %s", addr, logf.Name())
}

func printWelcome(addr, dir string) {
	fmt.Printf(`
Stevedore is up.
  API server:  kubectl --kubeconfig %[2]s/kubeconfig get registries,repositories
  registry:    http://%[1]s  (plain HTTP, auth mode none; log in %[2]s/registryd.log)

Push an image:
  crane push --insecure image.tar %[1]s/demo/hello:v1     # or: crane copy <any image> %[1]s/demo/hello:v1
  crane ls --insecure %[1]s/demo/hello

Ctrl-C stops everything.
`, addr, dir)
}
