package storage

import (
	"errors"
	"net/http"
	"syscall"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"google.golang.org/api/googleapi"
)

// TestTransient: what a driver reports as Unknown is retryable (503 to the
// client) only when the backend did not answer or answered 5xx/408/429.
func TestTransient(t *testing.T) {
	s3err := func(code int) error {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: code}}, Err: errors.New("s3")}}
	}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", syscall.ECONNREFUSED, true},
		{"s3 503 SlowDown", s3err(503), true},
		{"s3 500", s3err(500), true},
		{"s3 416 InvalidRange", s3err(416), false},
		{"s3 403", s3err(403), false},
		{"s3 409 ExistingObjectIsDirectory (versitygw posix, a racing delete)", &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 409}},
			Err:      &smithy.GenericAPIError{Code: "ExistingObjectIsDirectory", Message: "directory object already exists"}}}, true},
		{"s3 409 BucketAlreadyExists", &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 409}},
			Err:      &smithy.GenericAPIError{Code: "BucketAlreadyExists"}}}, false},
		{"azure 503 ServerBusy", &azcore.ResponseError{StatusCode: 503}, true},
		{"azure 400", &azcore.ResponseError{StatusCode: 400}, false},
		{"gcs 429", &googleapi.Error{Code: 429}, true},
		{"gcs 400", &googleapi.Error{Code: 400}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := transient(tt.err); got != tt.want {
				t.Fatalf("transient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
