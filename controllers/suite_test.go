package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/stevedore-dev/stevedore/controllers"
	"github.com/stevedore-dev/stevedore/internal/testenv"
)

// env is the package's one API server; the operator runs against it for the
// whole package.
var env *testenv.Env

const testImage = "example.test/stevedore:test"

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, func(e *testenv.Env) (func(), error) {
		env = e
		if err := bindOperatorRole(e); err != nil {
			return nil, err
		}
		stop, err := startOperator(e)
		operator.stop = stop
		return func() { operator.stop() }, err
	}))
}

// operator is the running operator of the package's tests; tests stop and
// start it as a pod restart would. requests counts what every operator run
// asked of the API server.
var operator = struct {
	stop     func()
	requests *apiRequests
	// metrics holds the running operator's status-derived metrics.
	metrics *prometheus.Registry
}{requests: &apiRequests{}}

// usageRecountInterval is the test operator's UsageRecountInterval.
const usageRecountInterval = time.Second

// probeRetryInterval is the test operator's ProbeRetryInterval, short so
// tests of failing storage need not wait 30s per step.
const probeRetryInterval = 2 * time.Second

// apiRequests records the operator's requests to the API server that change
// something, by namespace, as the API server sees them.
type apiRequests struct {
	mu     sync.Mutex
	writes map[string][]string
	reads  map[string][]string // past the cache: GETs and LISTs, not watches
}

func (a *apiRequests) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		parts := strings.Split(req.URL.Path, "/")
		if i := slices.Index(parts, "namespaces"); i >= 0 && i+1 < len(parts) {
			a.mu.Lock()
			if a.writes == nil {
				a.writes, a.reads = map[string][]string{}, map[string][]string{}
			}
			switch req.Method {
			case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
				a.writes[parts[i+1]] = append(a.writes[parts[i+1]], req.Method+" "+req.URL.Path)
			case http.MethodGet:
				if req.URL.Query().Get("watch") == "" {
					a.reads[parts[i+1]] = append(a.reads[parts[i+1]], req.Method+" "+req.URL.Path)
				}
			}
			a.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

// writesIn is every write the operator made in namespace ns so far.
func (a *apiRequests) writesIn(ns string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.writes[ns])
}

// readsIn is every read the operator sent the API server in namespace ns.
func (a *apiRequests) readsIn(ns string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.reads[ns])
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

const (
	operatorNamespace = "stevedore-system"
	operatorAccount   = "stevedore-operator"
	operatorUser      = "system:serviceaccount:" + operatorNamespace + ":" + operatorAccount
)

// bindOperatorRole gives the operator's ServiceAccount the ClusterRole
// controller-gen makes from the +kubebuilder:rbac markers (config/rbac/role.yaml).
func bindOperatorRole(e *testenv.Env) error {
	ctx := context.Background()
	var role rbacv1.ClusterRole
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(bytes.TrimPrefix(b, []byte("---\n")), &role); err != nil {
		return fmt.Errorf("config/rbac/role.yaml: %w", err)
	}
	role.Name = "stevedore-manager-role"
	for _, obj := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: operatorAccount, Namespace: operatorNamespace}},
		&role,
		&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "stevedore-manager-rolebinding"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: operatorAccount, Namespace: operatorNamespace}},
		},
	} {
		if err := e.Client.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
		}
	}
	return nil
}

// stopOperator stops it until startOperatorAgain.
func stopOperator() { operator.stop(); operator.stop = func() {} }

func startOperatorAgain(t *testing.T) {
	t.Helper()
	stop, err := startOperator(env)
	if err != nil {
		t.Fatal(err)
	}
	operator.stop = stop
}

// startOperator runs the operator's controllers until the returned stop is called.
func startOperator(e *testenv.Env) (stop func(), err error) {
	var logs io.Writer = io.Discard
	if os.Getenv("TEST_OPERATOR_LOGS") != "" {
		logs = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logs), zap.UseDevMode(true)))
	cfg := rest.CopyConfig(e.Config)
	cfg.Wrap(operator.requests.wrap)
	// As its ServiceAccount, with the generated ClusterRole: every test
	// also checks that the operator's RBAC suffices.
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: []string{
		"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"}}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: e.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: controllers.CacheOptions(), Client: controllers.ClientOptions(),
		// Tests restart the operator within one process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return nil, err
	}
	operator.metrics = prometheus.NewRegistry()
	if err := controllers.SetupWithManager(mgr, controllers.Options{
		RegistrydImage: testImage, LocalStorageReachable: true, ProbeRetryInterval: probeRetryInterval,
		UsageRecountInterval: usageRecountInterval,
		Metrics:              operator.metrics,
		// The storage servers of the tests listen on 127.0.0.1.
		StorageAllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// bucketDir is a directory for a file:// bucket the operator keeps probing
// after the test ends, so its removal is best effort.
func bucketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "stevedore-bucket-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// newNamespace gives each test a namespace of its own.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t-" + rand.String(8)}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// eventually polls check until it returns nil or the time is up.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func get(obj client.Object, ns, name string) error {
	return env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, obj)
}
