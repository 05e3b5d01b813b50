package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// Digest summarises a table's rows independently of their order: the row
// count and the sum, modulo 2^256, of the SHA-256 of each row's canonical
// JSON (the spine's canonical form of the row object events carry). A sum
// rather than an XOR keeps duplicate rows (tables without a key) counted.
type Digest struct {
	Rows int64
	sum  big.Int
}

var modulus = new(big.Int).Lsh(big.NewInt(1), 256)

// Add counts one row, given as the JSON object an event carries.
func (d *Digest) Add(row []byte) error {
	h, err := RowHash(row)
	if err != nil {
		return err
	}
	d.AddHash(h)
	return nil
}

// AddHash counts one row by its RowHash.
func (d *Digest) AddHash(h [32]byte) {
	d.Rows++
	d.sum.Add(&d.sum, new(big.Int).SetBytes(h[:]))
	d.sum.Mod(&d.sum, modulus)
}

// AddDigest adds another digest, given as its row count and Hex: the digest
// of the union of both sets of rows (the sum of a checkpoint's chunks).
func (d *Digest) AddDigest(rows int64, digest string) error {
	b, err := hex.DecodeString(digest)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("digest %q is not 64 hex digits", digest)
	}
	d.Rows += rows
	d.sum.Add(&d.sum, new(big.Int).SetBytes(b))
	d.sum.Mod(&d.sum, modulus)
	return nil
}

// Hex is the sum as 64 lower-case hex digits.
func (d *Digest) Hex() string {
	b := d.sum.FillBytes(make([]byte, 32))
	return hex.EncodeToString(b)
}

// RowHash is the SHA-256 of the canonical JSON of a row object.
func RowHash(row []byte) ([32]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(row))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return [32]byte{}, fmt.Errorf("row is not JSON: %w", err)
	}
	return ValueHash(v)
}

// ValueHash is RowHash of a row already decoded (with UseNumber).
func ValueHash(v any) ([32]byte, error) {
	c, err := chain.Canonical(v)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(c), nil
}

// canonicalHash is ValueHash that also returns the canonical JSON.
func canonicalHash(v any) ([32]byte, []byte, error) {
	c, err := chain.Canonical(v)
	if err != nil {
		return [32]byte{}, nil, err
	}
	return sha256.Sum256(c), c, nil
}

// A chunked checkpoint lists, for each row it read, a pair of 6-byte hash
// prefixes: the key's and the row's. With them verify names the keys whose
// rows differ, without the checkpoint carrying any row value.
const (
	// PrefixSize is the length of a hash prefix in a pair.
	PrefixSize = 6
	// PairSize is the length of one (key, row) pair.
	PairSize = 2 * PrefixSize
)

// KeyJSON is the canonical JSON of a row's key: the object of its key
// columns, as the row object carries them. ok is false when the row is not
// an object or lacks a key column.
func KeyJSON(row any, keyColumns []string) ([]byte, bool) {
	m, isObj := row.(map[string]any)
	if !isObj || len(keyColumns) == 0 {
		return nil, false
	}
	// chain.Canonical of the key object, written without building it.
	names := keyColumns
	if !slices.IsSorted(names) {
		names = slices.Sorted(slices.Values(keyColumns))
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, c := range names {
		v, has := m[c]
		if !has {
			return nil, false
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		_ = chain.WriteValue(&buf, c, true) // a string cannot fail
		buf.WriteByte(':')
		if chain.WriteValue(&buf, v, true) != nil {
			return nil, false
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), true
}

// Prefix is the first PrefixSize bytes of a SHA-256, as a number.
func Prefix(h [32]byte) uint64 {
	var b [8]byte
	copy(b[2:], h[:PrefixSize])
	return binary.BigEndian.Uint64(b[:])
}

// KeyHash is the Prefix of the SHA-256 of a key's canonical JSON (KeyJSON).
func KeyHash(keyJSON []byte) uint64 { return Prefix(sha256.Sum256(keyJSON)) }

// AppendPair appends one (key, row) pair: the key's KeyHash and the Prefix
// of the row's RowHash.
func AppendPair(b []byte, keyHash uint64, rowHash [32]byte) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], keyHash)
	b = append(b, k[2:]...)
	return append(b, rowHash[:PrefixSize]...)
}

// Pair is one row of a chunked checkpoint: its key's and its row's prefixes.
type Pair struct{ Key, Row uint64 }

// EncodePairs is the compact form of a chunk's pairs in its CHECKPOINT
// event: standard base64 of the concatenated 12-byte pairs.
func EncodePairs(raw []byte) string { return base64.StdEncoding.EncodeToString(raw) }

// DecodePairs reads EncodePairs' form.
func DecodePairs(s string) ([]Pair, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("pairs are not base64: %w", err)
	}
	if len(raw)%PairSize != 0 {
		return nil, errors.New("pairs are not a whole number of 12-byte pairs")
	}
	out := make([]Pair, len(raw)/PairSize)
	var b [8]byte
	for i := range out {
		p := raw[i*PairSize:]
		copy(b[2:], p[:PrefixSize])
		out[i].Key = binary.BigEndian.Uint64(b[:])
		copy(b[2:], p[PrefixSize:PairSize])
		out[i].Row = binary.BigEndian.Uint64(b[:])
	}
	return out, nil
}

// RowAndKey decodes a row object once and returns its RowHash and its
// KeyJSON (nil when keyColumns is empty or the row lacks one of them).
func RowAndKey(row []byte, keyColumns []string) ([32]byte, []byte, error) {
	dec := json.NewDecoder(bytes.NewReader(row))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return [32]byte{}, nil, fmt.Errorf("row is not JSON: %w", err)
	}
	h, err := ValueHash(v)
	if err != nil {
		return h, nil, err
	}
	k, _ := KeyJSON(v, keyColumns)
	return h, k, nil
}
