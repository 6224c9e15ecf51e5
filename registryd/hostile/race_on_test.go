//go:build race

package hostile

// raceEnabled: the race detector multiplies memory, so RSS bounds do not apply.
const raceEnabled = true
