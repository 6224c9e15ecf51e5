package uploads

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	s := NewSigner([]byte("secret"))
	st := State{ID: "0123456789abcdef0123456789abcdef", Repo: "team/app", Alg: "sha256", Offset: 42, Parts: 3, Hash: []byte{1, 2, 3}, Started: 7}
	got, err := s.Decode(s.Encode(st))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != st.ID || got.Repo != st.Repo || got.Offset != 42 || got.Parts != 3 || string(got.Hash) != "\x01\x02\x03" {
		t.Fatalf("round trip = %+v", got)
	}
}

func TestTokenRejects(t *testing.T) {
	s := NewSigner([]byte("secret"))
	good := s.Encode(State{ID: "x", Repo: "r", Alg: "sha256", Offset: 1})
	payload, sig, _ := strings.Cut(good, ".")
	tests := map[string]string{
		"empty":          "",
		"no signature":   payload,
		"bad base64":     "!!!." + sig,
		"other payload":  s.Encode(State{ID: "y"})[:10] + "." + sig,
		"other secret":   NewSigner([]byte("other")).Encode(State{ID: "x"}),
		"truncated sig":  payload + "." + sig[:10],
		"too long":       strings.Repeat("a", maxTokenLength+1),
		"negative":       s.Encode(State{Offset: -1}),
		"json not state": signRaw(s, `[1,2]`),
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := s.Decode(tok); !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Decode = %v, want ErrInvalidToken", err)
			}
		})
	}
}

func signRaw(s *Signer, payload string) string {
	return b64(payload) + "." + b64(string(s.sign([]byte(payload))))
}

// FuzzDecode: whatever the client sends, Decode never panics, and it only
// accepts what Encode produced for the same secret.
func FuzzDecode(f *testing.F) {
	s := NewSigner([]byte("fuzz secret"))
	f.Add(s.Encode(State{ID: "0123456789abcdef0123456789abcdef", Repo: "a", Alg: "sha256", Offset: 10, Parts: 1}))
	f.Add("eyJpZCI6IngifQ.AAAA")
	f.Add(".")
	f.Fuzz(func(t *testing.T, tok string) {
		st, err := s.Decode(tok)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error not wrapping ErrInvalidToken: %v", err)
			}
			return
		}
		if st.Offset < 0 || st.Parts < 0 {
			t.Fatalf("accepted negative state %+v", st)
		}
		if _, err := s.Decode(s.Encode(st)); err != nil {
			t.Fatalf("re-encoded accepted state rejected: %v", err)
		}
	})
}

func b64(s string) string { return base64URL.EncodeToString([]byte(s)) }

var base64URL = base64.RawURLEncoding
