// Package testkey writes throwaway signing keys for tests and benchmarks
// that start the agent as a process.
package testkey

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// Write creates a new key in dir and returns its file.
func Write(dir string) (string, error) {
	key, err := trail.GenerateKey()
	if err != nil {
		return "", err
	}
	pemBytes, err := key.MarshalPEM()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "signing-key.pem")
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		return "", fmt.Errorf("writing a test signing key: %w", err)
	}
	return path, nil
}
