// Package version holds the build's version, set with -ldflags at build time.
package version

// Version of Stevedore; overwritten by the Makefile's -ldflags.
var Version = "dev"
