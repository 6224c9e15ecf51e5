// Command registryd is Stevedore's stateless OCI distribution server.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "registryd: not yet implemented")
	os.Exit(1)
}
