// Package uploads implements blob uploads that any replica can continue:
// the upload's state travels with the client in an HMAC-signed token, and
// each chunk is one part object in the bucket.
package uploads

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidToken: the token is malformed or not signed with our secret.
var ErrInvalidToken = errors.New("invalid upload token")

// maxTokenLength bounds what Decode will look at; a real token is a few
// hundred bytes (a serialized sha512 state is ~200).
const maxTokenLength = 4096

// State is everything a replica needs to continue an upload.
type State struct {
	ID   string `json:"id"`
	Repo string `json:"repo"`
	// Alg is the digest algorithm the running hash computes.
	Alg    string `json:"alg"`
	Offset int64  `json:"off"`
	Parts  int    `json:"parts"`
	// Hash is the running hash's MarshalBinary state after Offset bytes.
	Hash []byte `json:"hash,omitempty"`
	// Last is the random tag of the last part written (storage.UploadPartKey):
	// with the signature it names exactly the parts whose bytes Hash covers.
	Last string `json:"last,omitempty"`
	// Started is when the upload began (unix nanoseconds), for metrics.
	Started int64 `json:"start"`
}

// Signer encodes and verifies state tokens with a secret shared by every
// replica.
type Signer struct {
	key []byte
}

// NewSigner returns a Signer for secret. The secret is domain-separated
// from any other use of it by deriving the key.
func NewSigner(secret []byte) *Signer {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("stevedore upload state v1"))
	return &Signer{key: mac.Sum(nil)}
}

func (s *Signer) sign(payload []byte) []byte {
	mac := hmac.New(sha256.New, s.key)
	mac.Write(payload)
	return mac.Sum(nil)
}

// Encode returns the URL-safe token of st.
func (s *Signer) Encode(st State) string {
	payload, _ := json.Marshal(st) // State has only plain fields: cannot fail
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(s.sign(payload))
}

// Decode verifies token and returns the state it carries.
func (s *Signer) Decode(token string) (State, error) {
	if len(token) > maxTokenLength {
		return State{}, fmt.Errorf("%w: too long", ErrInvalidToken)
	}
	p, sig, ok := strings.Cut(token, ".")
	if !ok {
		return State{}, fmt.Errorf("%w: no signature", ErrInvalidToken)
	}
	enc := base64.RawURLEncoding
	payload, err := enc.DecodeString(p)
	if err != nil {
		return State{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	mac, err := enc.DecodeString(sig)
	if err != nil {
		return State{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if !hmac.Equal(mac, s.sign(payload)) {
		return State{}, fmt.Errorf("%w: bad signature", ErrInvalidToken)
	}
	var st State
	if err := json.Unmarshal(payload, &st); err != nil {
		return State{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if st.Offset < 0 || st.Parts < 0 {
		return State{}, fmt.Errorf("%w: negative offset or part count", ErrInvalidToken)
	}
	return st, nil
}
