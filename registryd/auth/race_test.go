//go:build race

package auth

// raceDetector: the race detector multiplies CPU costs several times.
const raceDetector = true
