// Package gcreport is the report `registryd gc` leaves as its container's
// termination message and the operator reads into Registry status.gc: the
// one channel from a collector's pod to the operator that needs no write
// permission for registryd's ServiceAccount.
package gcreport

import (
	"encoding/json"
	"fmt"
)

// MaxBytes is the kubelet's limit on a termination message.
const MaxBytes = 4096

// maxMessage leaves room in MaxBytes for the counts.
const maxMessage = 2048

// Report is one run's outcome.
type Report struct {
	DryRun         bool   `json:"dryRun,omitempty"`
	DeletedObjects int64  `json:"deletedObjects"`
	Manifests      int64  `json:"manifests"`
	Blobs          int64  `json:"blobs"`
	ReclaimedBytes int64  `json:"reclaimedBytes"`
	StoredBlobs    int64  `json:"storedBlobs"`
	StoredBytes    int64  `json:"storedBytes"`
	Failed         bool   `json:"failed,omitempty"`
	Message        string `json:"message,omitempty"`
}

// Marshal encodes r within MaxBytes, shortening the message if need be.
func (r Report) Marshal() []byte {
	if len(r.Message) > maxMessage {
		r.Message = r.Message[:maxMessage] + "…"
	}
	b, _ := json.Marshal(r) // plain fields: cannot fail
	return b
}

// Parse decodes a termination message.
func Parse(msg string) (Report, error) {
	var r Report
	if err := json.Unmarshal([]byte(msg), &r); err != nil {
		return Report{}, fmt.Errorf("the collector's report: %w", err)
	}
	return r, nil
}
