package controllers

import (
	"context"
	"errors"
)

// runPhases runs every phase of a reconcile, in order, and joins their errors:
// one failing phase does not keep the others from converging.
func runPhases[S any](ctx context.Context, s S, phases ...func(context.Context, S) error) error {
	var errs []error
	for _, phase := range phases {
		if err := phase(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
