package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeKeypair(t *testing.T, dir, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"registry"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// As the kubelet updates a Secret volume: new files, then one rename.
	tmp := filepath.Join(dir, "new")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(filepath.Join(dir, "data"))
	if err := os.Rename(tmp, filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
}

// servedCN makes a TLS handshake with a server using the reloader and
// returns the CommonName of the certificate it presented.
func servedCN(t *testing.T, r *certReloader) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: r.GetCertificate})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reads the served certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestCertReload: a renewed keypair (the kubelet rewriting the Secret's
// volume) is served from the next check on, without a restart; a broken
// update keeps the last good keypair.
func TestCertReload(t *testing.T) {
	dir := t.TempDir()
	writeKeypair(t, dir, "first")
	crt, key := filepath.Join(dir, "data", "tls.crt"), filepath.Join(dir, "data", "tls.key")
	r, err := newCertReloader(crt, key, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cn := servedCN(t, r); cn != "first" {
		t.Fatalf("served %q, want first", cn)
	}
	time.Sleep(10 * time.Millisecond) // a distinct mtime
	writeKeypair(t, dir, "renewed")
	if cn := servedCN(t, r); cn != "renewed" {
		t.Fatalf("after renewal served %q, want renewed", cn)
	}
	if err := os.WriteFile(crt, []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := servedCN(t, r); cn != "renewed" {
		t.Fatalf("after a broken update served %q, want the last good (renewed)", cn)
	}
}
