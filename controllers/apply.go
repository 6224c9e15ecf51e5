package controllers

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
)

// applyConfiguration is what every client-go apply configuration offers.
type applyConfiguration interface {
	runtime.ApplyConfiguration
	GetName() *string
}

// kindOf names an apply configuration's kind for error messages.
func kindOf(obj applyConfiguration) string {
	return strings.TrimSuffix(reflect.TypeOf(obj).Elem().Name(), "ApplyConfiguration")
}

func ptrString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// convert copies between a typed object and its apply configuration (or back):
// both have the same JSON form.
func convert(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("converting %T: %w", in, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("converting %T to %T: %w", in, out, err)
	}
	return nil
}

// mustConvert is convert for API types, whose JSON forms always match.
func mustConvert(in, out any) {
	if err := convert(in, out); err != nil {
		panic(err)
	}
}
