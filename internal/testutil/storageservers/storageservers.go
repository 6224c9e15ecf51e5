// Package storageservers starts the object stores registryd is tested
// against — versitygw (S3), Azurite (Azure Blob) and fake-gcs-server (GCS) —
// on 127.0.0.1, each with one empty bucket, from the binaries
// hack/storage-servers.sh installs. Tests use it through testutil-style
// helpers (Start); hack/storage-servers uses it for shell scripts.
package storageservers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"google.golang.org/api/option"
)

// Kind names a backend.
type Kind string

const (
	S3    Kind = "s3"
	Azure Kind = "azure"
	GCS   Kind = "gcs"
	// MinIO is a second S3 server, slow to build, so only `make
	// test-minio` installs it; it is not in Kinds.
	MinIO Kind = "minio"
)

// Kinds is every backend make test runs, in the order scripts print them.
var Kinds = []Kind{S3, Azure, GCS}

// Bucket is the bucket (container) each server is started with.
const Bucket = "stevedore"

// Credentials the servers are started with. Azurite's are its well-known
// development account (the emulator accepts no other).
const (
	S3AccessKey   = "stevedore"
	S3SecretKey   = "stevedore-secret-key"
	AzureAccount  = "devstoreaccount1"
	AzureKey      = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	binaryEnvName = "STEVEDORE_STORAGE_SERVERS"
)

// Server is one running (or stopped) object store.
type Server struct {
	Kind Kind
	// URL is the storage URL registryd takes (--storage, storage.url).
	URL string
	// Env is the environment registryd needs for URL: the credentials a
	// Registry's storage.secretRef would hold.
	Env map[string]string
	// Addr is 127.0.0.1:port.
	Addr string

	bin, dir string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	logf     *os.File
}

// BinDir finds the directory hack/storage-servers.sh install prints:
// $STEVEDORE_STORAGE_SERVERS, else the cache.
func BinDir() string {
	if d := os.Getenv(binaryEnvName); d != "" {
		return d
	}
	cache := os.Getenv("STEVEDORE_CACHE")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(base, "stevedore")
	}
	return filepath.Join(cache, "storage-servers")
}

func binary(k Kind) string {
	switch k {
	case S3:
		return "versitygw"
	case Azure:
		return "azurite-blob"
	case MinIO:
		return "minio"
	default:
		return "fake-gcs-server"
	}
}

// Installed reports whether the server binary for k is in binDir.
func Installed(binDir string, k Kind) bool {
	st, err := os.Stat(filepath.Join(binDir, binary(k)))
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// New prepares a server of kind k with its data under dir, on a free port;
// Start runs it.
func New(binDir string, k Kind, dir string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s := &Server{Kind: k, Addr: addr, bin: filepath.Join(binDir, binary(k)), dir: dir}
	switch k {
	case S3, MinIO:
		s.URL = "s3://" + Bucket + "?endpoint=http://" + addr + "&use_path_style=true"
		s.Env = map[string]string{"AWS_ACCESS_KEY_ID": S3AccessKey, "AWS_SECRET_ACCESS_KEY": S3SecretKey, "AWS_REGION": "us-east-1"}
	case Azure:
		// A domain of 127.0.0.1:port makes gocloud address the account
		// path-style (http://127.0.0.1:port/devstoreaccount1/container).
		s.URL = "azblob://" + Bucket + "?protocol=http&domain=" + addr
		s.Env = map[string]string{"AZURE_STORAGE_ACCOUNT": AzureAccount, "AZURE_STORAGE_KEY": AzureKey}
	case GCS:
		s.URL = "gs://" + Bucket
		s.Env = map[string]string{"STORAGE_EMULATOR_HOST": addr}
	default:
		return nil, fmt.Errorf("unknown storage server kind %q", k)
	}
	return s, os.MkdirAll(dir, 0o755)
}

func (s *Server) args() []string {
	host, port, _ := net.SplitHostPort(s.Addr)
	data := filepath.Join(s.dir, "data")
	switch s.Kind {
	case S3:
		// --keep-alive: versitygw closes every connection after one
		// answer unless told otherwise, which no S3 service does; without
		// it each request paid a dial (11 % of the adversarial suite's S3
		// CPU) and left a TIME-WAIT behind (20,000 in one 45 s case).
		// --quiet, as the other servers here run: its line per request
		// to server.log was 5 % of its CPU in make bench-gc's profile.
		return []string{"--keep-alive", "--quiet", "--port", s.Addr, "--access", S3AccessKey, "--secret", S3SecretKey, "posix", data}
	case MinIO:
		return []string{"server", "--address", s.Addr, "--quiet", data}
	case Azure:
		return []string{"--blobHost", host, "--blobPort", port, "--location", data,
			"--skipApiVersionCheck", "--loose", "--disableProductStyleUrl", "--silent", "--disableTelemetry"}
	default:
		return []string{"-scheme", "http", "-host", host, "-port", port, "-public-host", s.Addr,
			"-backend", "filesystem", "-filesystem-root", data, "-log-level", "warn"}
	}
}

// Start runs the server (again, after Stop, on the same port and data) and
// returns once it answers with its bucket in place.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "data"), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	dieWithParent(cmd)
	if s.Kind == MinIO {
		cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+S3AccessKey, "MINIO_ROOT_PASSWORD="+S3SecretKey,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done, s.logf = cmd, done, logf
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			s.cmd = nil
			return fmt.Errorf("%s exited: %s", s.Kind, tail(string(b), 2000))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lastErr = s.ensureBucket(cctx)
		cancel()
		if lastErr == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s on %s did not come up: %w", s.Kind, s.Addr, lastErr)
}

// Stop kills the server (as an outage would: no graceful shutdown) and
// waits for it to exit. Its data stays for the next Start.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	_ = s.logf.Close()
	s.cmd = nil
}

// ensureBucket creates the bucket, accepting one that exists: it doubles
// as the readiness check.
func (s *Server) ensureBucket(ctx context.Context) error {
	switch s.Kind {
	case S3, MinIO:
		c := s3.New(s3.Options{
			Region: "us-east-1", BaseEndpoint: aws.String("http://" + s.Addr), UsePathStyle: true,
			Credentials: credentials.NewStaticCredentialsProvider(S3AccessKey, S3SecretKey, ""),
		})
		_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(Bucket)})
		var owned interface{ ErrorCode() string }
		if errors.As(err, &owned) && (owned.ErrorCode() == "BucketAlreadyOwnedByYou" || owned.ErrorCode() == "BucketAlreadyExists") {
			return nil
		}
		return err
	case Azure:
		cred, err := azblob.NewSharedKeyCredential(AzureAccount, AzureKey)
		if err != nil {
			return err
		}
		c, err := azblob.NewClientWithSharedKeyCredential("http://"+s.Addr+"/"+AzureAccount, cred, nil)
		if err != nil {
			return err
		}
		_, err = c.CreateContainer(ctx, Bucket, nil)
		var re *azcore.ResponseError
		if errors.As(err, &re) && bloberror.Code(re.ErrorCode) == bloberror.ContainerAlreadyExists {
			return nil
		}
		return err
	default:
		c, err := storage.NewClient(ctx, option.WithEndpoint("http://"+s.Addr+"/storage/v1/"),
			option.WithoutAuthentication(), option.WithHTTPClient(http.DefaultClient))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Bucket(Bucket).Attrs(ctx); err == nil {
			return nil
		}
		return c.Bucket(Bucket).Create(ctx, "stevedore", nil)
	}
}

// EnvList is Env as KEY=VALUE lines for exec.Cmd.Env, sorted.
func (s *Server) EnvList() []string {
	var out []string
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "STORAGE_EMULATOR_HOST"} {
		if v, ok := s.Env[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// Start starts a server of kind k for test t, stopped when t ends. A
// missing binary skips the test, or fails it under CI, where `make test`
// installs the servers (hack/storage-servers.sh install).
func Start(t testing.TB, k Kind) *Server {
	t.Helper()
	bin := BinDir()
	if !Installed(bin, k) {
		msg := fmt.Sprintf("%s not installed in %s (hack/storage-servers.sh install; make test does it)", binary(k), bin)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s, err := New(bin, k, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			t.Logf("%s log (tail):\n%s", k, tail(string(b), 3000))
		}
	})
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// BucketDir is where versitygw keeps the bucket's objects as files (S3
// only), for tests that look at what an outage left behind.
func (s *Server) BucketDir() string { return filepath.Join(s.dir, "data", Bucket) }

// Port is the server's port, for logs.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}
