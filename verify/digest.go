package verify

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"

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
