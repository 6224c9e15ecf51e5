package gc

import "time"

// WithPause sets Options.pause.
func WithPause(o Options, d time.Duration) Options {
	o.pause = d
	return o
}
