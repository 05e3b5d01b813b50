// Package testkey writes throwaway signing keys for tests and benchmarks
// that start the agent as a process.
package testkey

import (
	"fmt"
	"path/filepath"

	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// Write creates a new key in dir and returns its file.
func Write(dir string) (string, error) {
	path := filepath.Join(dir, "signing-key.pem")
	if _, err := trail.NewKeyFile(path); err != nil {
		return "", fmt.Errorf("writing a test signing key: %w", err)
	}
	return path, nil
}
