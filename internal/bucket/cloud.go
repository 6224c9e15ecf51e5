package bucket

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/s3blob"
	"gocloud.dev/gcp"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"
)

// The cloud drivers are opened here rather than through gocloud's default
// URL mux because the mux's openers read credentials from the process
// environment only, once, and the operator must open each Registry's bucket
// with the credentials of that Registry's secretRef. The URL query
// parameters stay gocloud's (the parsers below are gocloud's own), so a
// storage.url means the same thing in the operator and in registryd.

// ResponseHeaderTimeout bounds how long a cloud request waits for the
// backend to start answering once the request is sent. Without it a hung
// backend (accepting connections, answering nothing) holds every client
// request open forever; with it the request fails, registryd answers 503
// with Retry-After, and the client retries. Bodies are not bounded: a
// large blob may take as long as it takes. A variable so tests can lower it.
var ResponseHeaderTimeout = time.Minute

// maxIdleConnsPerHost is how many idle connections each cloud client keeps
// to its one storage endpoint. net/http's default keeps 2 (the AWS SDK's,
// 10), while registryd sends that one host as many requests at once as it
// has clients: every burst above the limit dialed new connections (and, on
// TLS, paid new handshakes) and closed them again. Measured on the
// adversarial suite's S3 case: 11 % of the process's CPU went to dialing.
const maxIdleConnsPerHost = 100

// tuneTransport sets what every cloud client's transport shares, whether
// built here (transport) or by the AWS SDK (openS3).
func tuneTransport(t *http.Transport) {
	t.ResponseHeaderTimeout = ResponseHeaderTimeout
	t.MaxIdleConns, t.MaxIdleConnsPerHost = maxIdleConnsPerHost, maxIdleConnsPerHost
}

// transport is the HTTP transport of the Azure and GCS clients.
func (o Options) transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	tuneTransport(t)
	if o.DialControl != nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: o.DialControl}
		t.DialContext = d.DialContext
	}
	return t
}

// isolated: the credentials are Options.Env's and nobody else's.
func (o Options) isolated() bool { return o.Isolated || len(o.Env) > 0 }

// getenv answers the driver environment variables: from Options.Env when
// isolated (a Registry's secretRef, read by the operator: then it is the
// whole environment, so the operator never lends its own credentials to a
// Registry), else from the process (registryd, where the secretRef is the
// pod's environment and the pod's ServiceAccount its identity).
func (o Options) getenv(key string) string {
	if o.isolated() {
		return o.Env[key]
	}
	return os.Getenv(key)
}

// ErrNoCredentials: an isolated open found no credentials in Options.Env, and
// will not fall back on the process's identity.
var ErrNoCredentials = errors.New("no credentials")

// openS3 opens s3://bucket?endpoint=…&region=…&use_path_style=true.
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) and
// AWS_REGION come from the environment; without keys the SDK's default
// chain applies (web identity, instance roles).
func openS3(ctx context.Context, u *url.URL, o Options) (*blob.Bucket, error) {
	q := u.Query()
	var s3opts []func(*s3.Options)
	for _, key := range []string{"use_path_style", "s3ForcePathStyle", "disable_https"} {
		v := q.Get(key)
		if v == "" {
			continue
		}
		q.Del(key)
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("invalid value for %q: %w", key, err)
		}
		if key == "disable_https" {
			s3opts = append(s3opts, func(so *s3.Options) { so.EndpointOptions.DisableHTTPS = on })
		} else {
			s3opts = append(s3opts, func(so *s3.Options) { so.UsePathStyle = on })
		}
	}
	if q.Get("region") == "" {
		for _, k := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
			if r := o.getenv(k); r != "" {
				q.Set("region", r)
				break
			}
		}
	}
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, err
	}
	hc := awshttp.NewBuildableClient().WithTransportOptions(tuneTransport)
	if o.DialControl != nil {
		hc = hc.WithDialerOptions(func(d *net.Dialer) { d.Control = o.DialControl })
	}
	cfg.HTTPClient = hc
	if id := o.getenv("AWS_ACCESS_KEY_ID"); id != "" {
		cfg.Credentials = aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(
			id, o.getenv("AWS_SECRET_ACCESS_KEY"), o.getenv("AWS_SESSION_TOKEN")))
	} else if o.isolated() {
		// Never the SDK's default chain (instance role, web identity,
		// shared files): that is the operator's identity, not the Registry's.
		return nil, fmt.Errorf("%w: storage.secretRef has no AWS_ACCESS_KEY_ID", ErrNoCredentials)
	}
	client := s3.NewFromConfig(cfg, s3opts...)
	return s3blob.OpenBucket(ctx, client, u.Host, &s3blob.Options{
		// The transfer manager does not take this from the config.
		RequestChecksumCalculation: cfg.RequestChecksumCalculation,
	})
}

// openAzure opens azblob://container (query: domain, protocol, localemu,
// storage_account). Credentials, in gocloud's order: AZURE_STORAGE_ACCOUNT
// with AZURE_STORAGE_KEY (shared key: can sign URLs), AZURE_STORAGE_SAS_TOKEN,
// AZURE_STORAGE_CONNECTION_STRING, else Azure's default credential chain.
func openAzure(ctx context.Context, u *url.URL, o Options) (*blob.Bucket, error) {
	isCDN, _ := strconv.ParseBool(o.getenv("AZURE_STORAGE_IS_CDN"))
	isEmu, _ := strconv.ParseBool(o.getenv("AZURE_STORAGE_IS_LOCAL_EMULATOR"))
	account, key := o.getenv("AZURE_STORAGE_ACCOUNT"), o.getenv("AZURE_STORAGE_KEY")
	if a := u.Query().Get("storage_account"); a != "" {
		account = a
	}
	sas, connStr := o.getenv("AZURE_STORAGE_SAS_TOKEN"), o.getenv("AZURE_STORAGE_CONNECTION_STRING")
	if o.isolated() && key == "" && sas == "" && connStr == "" {
		return nil, fmt.Errorf("%w: storage.secretRef has neither AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN nor AZURE_STORAGE_CONNECTION_STRING", ErrNoCredentials)
	}
	opener := &azureblob.URLOpener{
		ServiceURLOptions: azureblob.ServiceURLOptions{
			AccountName: account, SASToken: sas, StorageDomain: o.getenv("AZURE_STORAGE_DOMAIN"),
			Protocol: o.getenv("AZURE_STORAGE_PROTOCOL"), IsCDN: isCDN, IsLocalEmulator: isEmu,
		},
		MakeClient: func(svcURL azureblob.ServiceURL, name azureblob.ContainerName) (*container.Client, error) {
			opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: o.transport()}}}
			containerURL, err := url.JoinPath(string(svcURL), string(name))
			if err != nil {
				return nil, err
			}
			switch {
			case account != "" && key != "":
				cred, err := azblob.NewSharedKeyCredential(account, key)
				if err != nil {
					return nil, fmt.Errorf("AZURE_STORAGE_KEY: %w", err)
				}
				return container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
			case sas != "":
				return container.NewClientWithNoCredential(containerURL, opts)
			case connStr != "":
				return container.NewClientFromConnectionString(connStr, string(name), opts)
			case o.isolated():
				// Never DefaultAzureCredential: managed and workload
				// identities are the operator's, not the Registry's.
				return nil, fmt.Errorf("%w: storage.secretRef has neither AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN nor AZURE_STORAGE_CONNECTION_STRING", ErrNoCredentials)
			}
			cred, err := azidentity.NewDefaultAzureCredential(nil)
			if err != nil {
				return nil, err
			}
			return container.NewClient(containerURL, cred, opts)
		},
	}
	if account == "" && connStr != "" {
		// gocloud's default: the account named in the connection string.
		for part := range strings.SplitSeq(connStr, ";") {
			if k, v, ok := strings.Cut(part, "="); ok && k == "AccountName" {
				opener.ServiceURLOptions.AccountName = v
			}
		}
	}
	return opener.OpenBucketURL(ctx, u)
}

// openGCS opens gs://bucket. With STORAGE_EMULATOR_HOST (fake-gcs-server)
// it talks to the emulator unauthenticated and signs URLs with a throwaway
// key, which the emulator does not check. Otherwise
// GOOGLE_APPLICATION_CREDENTIALS names a service-account key file — or, in
// a secretRef read by the operator, holds the key itself — whose
// client_email and private_key also sign URLs; without it, Application
// Default Credentials.
func openGCS(ctx context.Context, u *url.URL, o Options) (*blob.Bucket, error) {
	if host := o.getenv("STORAGE_EMULATOR_HOST"); host != "" {
		host = strings.TrimPrefix(strings.TrimPrefix(host, "http://"), "https://")
		// The last WithHTTPClient wins over the http.DefaultClient gcsblob
		// picks when the process has STORAGE_EMULATOR_HOST.
		opener := &gcsblob.URLOpener{
			Client: gcp.NewAnonymousHTTPClient(o.transport()),
			Options: gcsblob.Options{
				GoogleAccessID: "stevedore@emulator",
				SignBytes:      emulatorSign,
				ClientOptions: []option.ClientOption{option.WithEndpoint("http://" + host + "/storage/v1/"),
					option.WithoutAuthentication(), option.WithHTTPClient(&http.Client{Transport: o.transport()})},
			},
		}
		return opener.OpenBucketURL(ctx, u)
	}
	keyFile := o.getenv("GOOGLE_APPLICATION_CREDENTIALS")
	if keyFile == "" {
		if o.isolated() {
			// Never Application Default Credentials: the metadata server
			// answers with the operator's (or the node's) identity.
			return nil, fmt.Errorf("%w: storage.secretRef has no GOOGLE_APPLICATION_CREDENTIALS", ErrNoCredentials)
		}
		return blob.OpenBucket(ctx, u.String()) // gocloud: Application Default Credentials
	}
	key := []byte(keyFile)
	if !strings.HasPrefix(strings.TrimSpace(keyFile), "{") {
		if o.isolated() {
			// A path would be a file of the operator's own filesystem.
			return nil, errors.New("GOOGLE_APPLICATION_CREDENTIALS in storage.secretRef must hold the service-account key itself, not a path")
		}
		var err error
		if key, err = os.ReadFile(keyFile); err != nil {
			return nil, fmt.Errorf("GOOGLE_APPLICATION_CREDENTIALS: %w", err)
		}
	}
	var kind struct {
		Type string `json:"type"`
	}
	if o.isolated() && (json.Unmarshal(key, &kind) != nil || kind.Type != "service_account") {
		// Other kinds (external_account above all) fetch tokens with files
		// and metadata URLs of the process that uses them: the operator's.
		return nil, fmt.Errorf("GOOGLE_APPLICATION_CREDENTIALS in storage.secretRef must be a service_account key, not %q", kind.Type)
	}
	creds, err := google.CredentialsFromJSON(ctx, key, storage.ScopeFullControl)
	if err != nil {
		return nil, fmt.Errorf("GOOGLE_APPLICATION_CREDENTIALS: %w", err)
	}
	var sa struct {
		ClientEmail string `json:"client_email"`
		PrivateKey  string `json:"private_key"`
	}
	_ = json.Unmarshal(key, &sa)
	client, err := gcp.NewHTTPClient(o.transport(), creds.TokenSource)
	if err != nil {
		return nil, err
	}
	opts := gcsblob.Options{GoogleAccessID: sa.ClientEmail}
	if sa.PrivateKey != "" {
		opts.PrivateKey = []byte(sa.PrivateKey)
	}
	return (&gcsblob.URLOpener{Client: client, Options: opts}).OpenBucketURL(ctx, u)
}

var emulatorKey = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

// emulatorSign signs with a key made up for this process: fake-gcs-server
// serves signed URLs without checking the signature, but the client
// library refuses to build one without a signer.
func emulatorSign(b []byte) ([]byte, error) {
	k, err := emulatorKey()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
}

// BeforeSign returns the hook a bucket opened from rawURL with env needs
// when signing URLs (blob.SignedURLOptions.BeforeSign), or nil. Only the
// GCS emulator needs one: the client library signs for
// https://storage.googleapis.com unless told the emulator's plain-HTTP,
// path-style host, and only V4 signing takes a host.
func BeforeSign(rawURL string, env map[string]string) func(asFunc func(any) bool) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "gs" {
		return nil
	}
	host := Options{Env: env}.getenv("STORAGE_EMULATOR_HOST")
	if host == "" {
		return nil
	}
	host = strings.TrimPrefix(strings.TrimPrefix(host, "http://"), "https://")
	return func(asFunc func(any) bool) error {
		var opts *storage.SignedURLOptions
		if !asFunc(&opts) {
			return nil
		}
		opts.Scheme = storage.SigningSchemeV4
		opts.Insecure = true
		opts.Hostname = host
		opts.Style = storage.PathStyle()
		return nil
	}
}

// ListStart begins a GCS listing after the key prefix+after (StartOffset;
// prefix is the listing's own); other drivers' listings it leaves alone.
// registryd/storage handles S3 itself and takes this for the rest
// (storage.ListStart), so that it does not import the GCS client.
func ListStart(as func(any) bool, after string) {
	var q *storage.Query
	if as(&q) && q != nil {
		// StartOffset is inclusive; after itself is skipped by the caller.
		q.StartOffset = q.Prefix + after
	}
}
