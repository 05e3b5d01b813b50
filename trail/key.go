package trail

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Key is the agent's Ed25519 signing key. Its String and Format methods
// never print the private half.
type Key struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

// ErrKey is wrapped by every error about a key file; the message names the
// file and the fix, never the key's bytes.
var ErrKey = errors.New("signing key")

// pemType is the PEM block of a private key file: PKCS #8, as openssl
// genpkey -algorithm ed25519 writes it.
const pemType = "PRIVATE KEY"

// GenerateKey makes a new random key.
func GenerateKey() (*Key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating an Ed25519 key: %w", err)
	}
	return &Key{priv: priv, pub: pub}, nil
}

// LoadKey reads a PKCS #8 PEM file holding an Ed25519 private key (what
// `pgaudit-cdc keygen` and `openssl genpkey -algorithm ed25519` write).
func LoadKey(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist: create it with `pgaudit-cdc keygen --out %s`, or point --signing-key-file at the trail's key", ErrKey, path, path)
		}
		return nil, fmt.Errorf("%w: cannot read %s (%w): make it readable by the agent's user", ErrKey, path, errors.Unwrap(err))
	}
	k, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrKey, path, err)
	}
	return k, nil
}

// ParseKey reads a PKCS #8 PEM Ed25519 private key.
func ParseKey(data []byte) (*Key, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemType {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" file: write one with `pgaudit-cdc keygen`")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("the PRIVATE KEY block is not a valid PKCS #8 key: write one with `pgaudit-cdc keygen`")
	}
	priv, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the key is %T, not Ed25519: write one with `pgaudit-cdc keygen`", parsed)
	}
	return &Key{priv: priv, pub: priv.Public().(ed25519.PublicKey)}, nil
}

// MarshalPEM writes k as a PKCS #8 PEM file.
func (k *Key) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// Public returns the public half.
func (k *Key) Public() ed25519.PublicKey { return k.pub }

// Fingerprint names k's public key (see Fingerprint).
func (k *Key) Fingerprint() string { return Fingerprint(k.pub) }

// Sign signs msg.
func (k *Key) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// String names the key by its fingerprint only.
func (k *Key) String() string { return "ed25519 key " + k.Fingerprint() }

// Format prints String for every verb, so that no format prints the key.
func (k *Key) Format(f fmt.State, _ rune) { fmt.Fprint(f, k.String()) }

// Fingerprint is "SHA256:" and the hex SHA-256 of the raw public key.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "SHA256:" + hex.EncodeToString(sum[:])
}

// EncodePublic writes a public key as base64 (standard, padded).
func EncodePublic(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// ParsePublic reads a public key: base64 of the 32 raw bytes, or a PEM
// "PUBLIC KEY" (PKIX) block, or a private key file's public half.
func ParsePublic(text string) (ed25519.PublicKey, error) {
	text = strings.TrimSpace(text)
	if strings.HasPrefix(text, "-----BEGIN") {
		block, _ := pem.Decode([]byte(text))
		if block == nil {
			return nil, errors.New("not a PEM block")
		}
		switch block.Type {
		case "PUBLIC KEY":
			parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing the PUBLIC KEY block: %w", err)
			}
			pub, ok := parsed.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("the key is %T, not Ed25519", parsed)
			}
			return pub, nil
		case pemType:
			k, err := ParseKey([]byte(text))
			if err != nil {
				return nil, err
			}
			return k.pub, nil
		}
		return nil, fmt.Errorf("a PEM %q block is not a key", block.Type)
	}
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("not base64 of a 32-byte Ed25519 public key")
	}
	return ed25519.PublicKey(raw), nil
}

// MarshalPublicPEM writes pub as a PEM "PUBLIC KEY" block, for auditors.
func MarshalPublicPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// NewKeyFile generates a key and writes it to a new file at path (mode
// 0600; an existing file is never replaced: the error then wraps
// fs.ErrExist).
func NewKeyFile(path string) (*Key, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	pemBytes, err := key.MarshalPEM()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the key file: %w", err)
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing the key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing the key file: %w", err)
	}
	return key, nil
}
