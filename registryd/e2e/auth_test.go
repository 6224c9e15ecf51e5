package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/stevedore-dev/stevedore/internal/testutil"
)

// identity is who a client presents itself as ("" user: anonymous).
type identity struct{ user, pass string }

var (
	alice     = identity{"alice", "alice-pw-1"}
	wrongPass = identity{"alice", "not-her-password"}
	reader    = identity{"reader", "reader-pw-1"}
	anonymous = identity{}
)

// authClient pushes and pulls one small image or artifact with a real
// client, presenting id the way that client's users do.
type authClient struct {
	name string
	push func(t *testing.T, host, ref string, id identity) (string, error)
	pull func(t *testing.T, host, ref string, id identity) (string, error)
}

// try runs a client and returns its combined output and error.
func try(home, dir, bin string, args ...string) (string, error) {
	return tryEnv(nil, home, dir, bin, args...)
}

// tryEnv is try with extra environment variables.
func tryEnv(env []string, home, dir, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
		"DOCKER_CONFIG="+filepath.Join(home, ".docker"), "XDG_RUNTIME_DIR="+filepath.Join(home, "run")), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func authClients(t *testing.T) []authClient {
	crane, oras := testutil.Client(t, "crane"), testutil.Client(t, "oras")
	regctl, skopeo := testutil.Client(t, "regctl"), testutil.Client(t, "skopeo")
	work := t.TempDir()
	layer := filepath.Join(work, "layer.tar")
	writeLayerTar(t, layer, map[string]string{"auth.txt": "pushed with credentials\n"})
	if err := os.WriteFile(filepath.Join(work, "artifact.txt"), []byte("artifact\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(work, "layout")
	writeLayout(t, layout)
	// Each call gets a fresh HOME, so no credential outlives its identity.
	home := func(t *testing.T) string {
		h := t.TempDir()
		_ = os.MkdirAll(filepath.Join(h, "run"), 0o700)
		return h
	}
	clients := []authClient{
		{
			name: "crane", // docker's config.json, written by crane auth login
			push: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				if id.user != "" {
					if out, err := try(h, "", crane, "auth", "login", host, "-u", id.user, "-p", id.pass); err != nil {
						return out, err
					}
				}
				return try(h, "", crane, "append", "--insecure", "-f", layer, "-t", ref)
			},
			pull: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				if id.user != "" {
					if out, err := try(h, "", crane, "auth", "login", host, "-u", id.user, "-p", id.pass); err != nil {
						return out, err
					}
				}
				return try(h, "", crane, "pull", "--insecure", ref, filepath.Join(h, "img.tar"))
			},
		},
		{
			name: "oras", // -u/-p flags
			push: func(t *testing.T, host, ref string, id identity) (string, error) {
				return try(home(t), work, oras, append([]string{"push", "--plain-http", ref, "artifact.txt:text/plain"}, orasCreds(id)...)...)
			},
			pull: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				return try(h, "", oras, append([]string{"pull", "--plain-http", "-o", filepath.Join(h, "out"), ref}, orasCreds(id)...)...)
			},
		},
		{
			name: "regctl", // regctl registry login
			push: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				if out, err := regctlLogin(h, regctl, host, id); err != nil {
					return out, err
				}
				return try(h, work, regctl, "artifact", "put", "--artifact-type", "application/vnd.stevedore.test", "-f", "artifact.txt", ref)
			},
			pull: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				if out, err := regctlLogin(h, regctl, host, id); err != nil {
					return out, err
				}
				return try(h, "", regctl, "artifact", "get", ref)
			},
		},
		{
			name: "skopeo", // --dest-creds / --src-creds
			push: func(t *testing.T, host, ref string, id identity) (string, error) {
				return try(home(t), "", skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false",
					skopeoCreds("--dest", id), "oci:"+layout+":v1", "docker://"+ref)
			},
			pull: func(t *testing.T, host, ref string, id identity) (string, error) {
				h := home(t)
				return try(h, "", skopeo, "--insecure-policy", "copy", "--src-tls-verify=false",
					skopeoCreds("--src", id), "docker://"+ref, "oci:"+filepath.Join(h, "out")+":v1")
			},
		},
	}
	if helm := helmBin(t); helm != "" {
		clients = append(clients, helmClient(helm))
	}
	return clients
}

// helmBin is HELM (set by make test), required under CI.
func helmBin(t *testing.T) string {
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if os.Getenv("CI") != "" {
		t.Fatal("HELM is not set: make test installs helm")
	}
	t.Log("HELM not set: helm is left out of the auth tests")
	return ""
}

// helmClient pushes and pulls a chart named after the reference's last
// path element (helm names the repository after the chart), after
// `helm registry login`.
func helmClient(helm string) authClient {
	split := func(ref string) (host, dir, chart string) {
		repo, _, _ := strings.Cut(ref, ":v")
		i, j := strings.Index(repo, "/"), strings.LastIndex(repo, "/")
		return repo[:i], repo[i+1 : j], repo[j+1:]
	}
	session := func(t *testing.T, host string, id identity) (string, []string, error) {
		h := t.TempDir()
		env := []string{"HELM_CACHE_HOME=" + h, "HELM_CONFIG_HOME=" + h, "HELM_DATA_HOME=" + h}
		if id.user == "" {
			return h, env, nil
		}
		out, err := tryEnv(env, h, "", helm, "registry", "login", host, "--insecure", "-u", id.user, "-p", id.pass)
		return h, env, errors.Join(err, errorIf(err != nil, out))
	}
	return authClient{
		name: "helm",
		push: func(t *testing.T, _, ref string, id identity) (string, error) {
			host, dir, chart := split(ref)
			h, env, err := session(t, host, id)
			if err != nil {
				return err.Error(), err
			}
			tgz := writeChart(t, h, chart)
			return tryEnv(env, h, "", helm, "push", tgz, "oci://"+host+"/"+dir, "--plain-http")
		},
		pull: func(t *testing.T, _, ref string, id identity) (string, error) {
			host, dir, chart := split(ref)
			h, env, err := session(t, host, id)
			if err != nil {
				return err.Error(), err
			}
			return tryEnv(env, h, h, helm, "pull", "oci://"+host+"/"+dir+"/"+chart, "--version", "0.1.0", "--plain-http")
		},
	}
}

func errorIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}

// writeChart packages a minimal chart NAME-0.1.0.tgz into dir.
func writeChart(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name+"-0.1.0.tgz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	body := []byte("apiVersion: v2\nname: " + name + "\nversion: 0.1.0\n")
	_ = tw.WriteHeader(&tar.Header{Name: name + "/Chart.yaml", Mode: 0o644, Size: int64(len(body))})
	_, _ = tw.Write(body)
	if err := errors.Join(tw.Close(), zw.Close()); err != nil {
		t.Fatal(err)
	}
	return path
}

func orasCreds(id identity) []string {
	if id.user == "" {
		return nil
	}
	return []string{"-u", id.user, "-p", id.pass}
}

func skopeoCreds(prefix string, id identity) string {
	if id.user == "" {
		return prefix + "-no-creds"
	}
	return prefix + "-creds=" + id.user + ":" + id.pass
}

func regctlLogin(home, regctl, host string, id identity) (string, error) {
	if out, err := try(home, "", regctl, "registry", "set", "--tls", "disabled", "--skip-check", host); err != nil {
		return out, err
	}
	if id.user == "" {
		return "", nil
	}
	return try(home, "", regctl, "registry", "login", host, "-u", id.user, "-p", id.pass, "--skip-check")
}

// writeHtpasswdFile writes bcrypt entries as `htpasswd -B` would, replacing
// the file by rename as the kubelet does for a Secret volume.
func writeHtpasswdFile(t *testing.T, path string, ids ...identity) {
	t.Helper()
	var b strings.Builder
	for _, id := range ids {
		h, err := bcrypt.GenerateFromPassword([]byte(id.pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(id.user + ":" + string(h) + "\n")
	}
	if err := os.WriteFile(path+".new", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// startHtpasswdRegistry runs registryd in htpasswd mode with alice
// (read-write) and reader (pull only).
func startHtpasswdRegistry(t *testing.T, flags ...string) (*registry, string) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "htpasswd")
	writeHtpasswdFile(t, file, alice, reader)
	if err := os.WriteFile(filepath.Join(dir, "readonly"), []byte("reader\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := startRegistryd(t, "file://"+t.TempDir(), append([]string{"--auth", "htpasswd",
		"--htpasswd-file", file, "--htpasswd-readonly-file", filepath.Join(dir, "readonly")}, flags...)...)
	return reg, file
}

var (
	says401 = regexp.MustCompile(`(?i)401|unauthorized|authentication required|credential not found`)
	says403 = regexp.MustCompile(`(?i)403|denied|forbidden`)
)

// expect checks one client operation: success, or failure saying want.
func expect(t *testing.T, what string, out string, err error, want *regexp.Regexp) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Errorf("%s: %v\n%s", what, err, tail(out, 1500))
	case want != nil && err == nil:
		t.Errorf("%s succeeded, want a refusal matching %s\n%s", what, want, tail(out, 1500))
	case want != nil && !want.MatchString(out):
		t.Errorf("%s refused, but not as %s:\n%s", what, want, tail(out, 1500))
	}
}

// TestHtpasswdClients: with each real client (crane, oras, regctl, skopeo,
// helm) and each challenge, the right
// password pushes and pulls, a wrong one gets 401, a read-only user pulls
// but gets 403 on push, and an anonymous client gets neither. No password
// reaches registryd's log.
func TestHtpasswdClients(t *testing.T) {
	t.Parallel()
	clients := authClients(t)
	for _, challenge := range []string{"basic", "bearer"} {
		t.Run(challenge, func(t *testing.T) {
			debug := testutil.FreeAddr(t)
			// Every client's wrong password comes from 127.0.0.1 for alice:
			// throttled (429) after a few, which TestLoginStorm covers.
			reg, _ := startHtpasswdRegistry(t, "--auth-challenge", challenge, "--debug-addr", debug, "--login-throttle=false")
			for _, c := range clients {
				t.Run(c.name, func(t *testing.T) {
					runSteps(t, c, reg.host, []step{
						{"push as alice", true, "app", alice, nil},
						{"pull as alice", false, "app", alice, nil},
						{"push with a wrong password", true, "wrong", wrongPass, says401},
						{"pull with a wrong password", false, "app", wrongPass, says401},
						{"pull as the read-only user", false, "app", reader, nil},
						{"push as the read-only user", true, "byreader", reader, says403},
						{"anonymous pull", false, "app", anonymous, says401},
						{"anonymous push", true, "anon", anonymous, says401},
					})
				})
			}
			logb, _ := os.ReadFile(reg.log)
			for _, secret := range []string{alice.pass, wrongPass.pass, reader.pass} {
				if strings.Contains(string(logb), secret) {
					t.Errorf("registryd's log contains a password")
				}
			}
			if !strings.Contains(string(logb), "authentication failed") {
				t.Errorf("registryd's log does not record the failed attempts")
			}
			// Bearer: the clients went through /token; basic: none did.
			resp := do(t, "GET", "http://"+debug+"/metrics", nil, nil, 200)
			body, _ := io.ReadAll(resp.Body)
			issued := regexp.MustCompile(`(?m)^registryd_auth_tokens_issued_total (\d+)`).FindStringSubmatch(string(body))
			if issued == nil || (challenge == "bearer") != (issued[1] != "0") {
				t.Errorf("tokens issued %v with the %s challenge", issued, challenge)
			}
			if !regexp.MustCompile(`registryd_auth_failures_total\{reason="denied"\} [1-9]`).Match(body) {
				t.Errorf("no denied attempt counted in the metrics")
			}
		})
	}
}

// TestAnonymousPull: with --anonymous-pull, every client pulls without
// credentials, and none can push without them.
func TestAnonymousPull(t *testing.T) {
	t.Parallel()
	clients := authClients(t)
	reg, _ := startHtpasswdRegistry(t, "--anonymous-pull")
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			runSteps(t, c, reg.host, []step{
				{"push as alice", true, "app", alice, nil},
				{"anonymous pull", false, "app", anonymous, nil},
				{"anonymous push", true, "anon", anonymous, says401},
			})
		})
	}
}

// step is one client operation on HOST/CLIENT/REPO:v1 and what it must do:
// succeed (want nil) or fail saying want.
type step struct {
	what string
	push bool
	repo string
	id   identity
	want *regexp.Regexp
}

func runSteps(t *testing.T, c authClient, host string, steps []step) {
	t.Helper()
	for _, st := range steps {
		op := c.pull
		if st.push {
			op = c.push
		}
		out, err := op(t, host, host+"/"+c.name+"/"+st.repo+":v1", st.id)
		expect(t, st.what, out, err, st.want)
	}
}

// TestHtpasswdRotation: a rewritten htpasswd file takes effect in the
// running process: the old password stops working, the new one works.
func TestHtpasswdRotation(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	reg, file := startHtpasswdRegistry(t)
	layer := filepath.Join(t.TempDir(), "layer.tar")
	writeLayerTar(t, layer, map[string]string{"r.txt": "rotation\n"})
	push := func(id identity, tag string) (string, error) {
		h := t.TempDir()
		if out, err := try(h, "", crane, "auth", "login", reg.host, "-u", id.user, "-p", id.pass); err != nil {
			return out, err
		}
		return try(h, "", crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/rotate/app:"+tag)
	}
	out, err := push(alice, "before")
	expect(t, "push with the first password", out, err, nil)

	rotated := identity{"alice", "alice-pw-2"}
	writeHtpasswdFile(t, file, rotated, reader)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err = push(alice, "old")
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	expect(t, "push with the old password after rotation", out, err, says401)
	out, err = push(rotated, "after")
	expect(t, "push with the new password", out, err, nil)
}

// TestAuthNoneWarns: mode none takes an anonymous push, and says loudly
// that auth is off.
func TestAuthNoneWarns(t *testing.T) {
	t.Parallel()
	crane := testutil.Client(t, "crane")
	reg := startRegistryd(t, "mem://", "--auth", "none")
	layer := filepath.Join(t.TempDir(), "layer.tar")
	writeLayerTar(t, layer, map[string]string{"n.txt": "none\n"})
	out, err := try(t.TempDir(), "", crane, "append", "--insecure", "-f", layer, "-t", reg.host+"/open/app:v1")
	expect(t, "anonymous push in mode none", out, err, nil)
	if b, _ := os.ReadFile(reg.log); !strings.Contains(string(b), "AUTH DISABLED") {
		t.Error("registryd in mode none does not warn that auth is disabled")
	}
}
