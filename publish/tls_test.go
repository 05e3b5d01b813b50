package publish

import (
	"bytes"
	"context"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// TestHTTPSWithCustomCAAndToken checks AUDIT_STREAM_CA_FILE and
// AUDIT_STREAM_TOKEN: the spine's certificate is trusted only through the CA
// file, the token travels as a bearer header, and it never reaches the logs.
func TestHTTPSWithCustomCAAndToken(t *testing.T) {
	const token = "s3cr3t-token-value"
	var authOK atomic.Int64
	spine := spinetest.New()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		authOK.Add(1)
		spine.ServeHTTP(w, r)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	// Without the CA the certificate is refused (and retried until the deadline).
	plain, err := NewClient(ClientConfig{URL: srv.URL, Token: token, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	plain.SetIdentity("1", "s")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if err := plain.Publish(ctx, testEvent("s", 1, 1)); err == nil {
		t.Fatalf("got nil, want a certificate error without the CA file")
	}
	cancel()
	if !strings.Contains(logs.String(), "certificate") {
		t.Errorf("the certificate failure is not explained in the logs:\n%s", logs.String())
	}

	c, err := NewClient(ClientConfig{URL: srv.URL, Token: token, CAFile: caFile, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity("1", "s")
	if err := c.Publish(context.Background(), testEvent("s", 1, 1)); err != nil {
		t.Fatalf("Publish over HTTPS with the CA file: %v", err)
	}
	if authOK.Load() < 2 {
		t.Fatalf("got %d authorised requests, want the read-back and the POST", authOK.Load())
	}
	if strings.Contains(logs.String(), token) {
		t.Fatalf("the token appears in the logs")
	}
	if _, err := NewClient(ClientConfig{URL: srv.URL, CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Fatalf("a missing CA file was accepted")
	}
	if _, err := NewClient(ClientConfig{URL: "http://user:pw@[::1"}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Fatalf("bad URL: got %v, want an error without the password", err)
	}
}
