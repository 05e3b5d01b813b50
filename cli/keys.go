package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

func newKeygenCmd() *cobra.Command {
	var out, publicOut string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Write a new Ed25519 signing key for the trail",
		Long: `keygen writes a new Ed25519 private key (PKCS #8 PEM, mode 0600) to --out,
for run --signing-key-file. It prints the key's fingerprint and, with
--public-out, writes the public key (PEM) for auditors: verify --public-key
checks the trail against it. It never overwrites a file.`,
		Example: "  pgaudit-cdc keygen --out /etc/pgaudit-cdc/signing.pem --public-out signing.pub.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError("keygen needs --out FILE: where to write the private key")
			}
			key, err := trail.NewKeyFile(out)
			if errors.Is(err, fs.ErrExist) {
				return &ExitError{Code: 2, Err: fmt.Errorf("%s exists: keygen never overwrites a key; choose another file", out)}
			}
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			if publicOut != "" {
				pub, err := trail.MarshalPublicPEM(key.Public())
				if err != nil {
					return err
				}
				if err := writeNew(publicOut, pub, 0o644); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\nfingerprint %s\npublic key %s\n", out, key.Fingerprint(), trail.EncodePublic(key.Public()))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the private key to (created, never overwritten)")
	cmd.Flags().StringVar(&publicOut, "public-out", "", "file to write the public key to, for auditors (PEM)")
	return cmd
}

// writeNew creates path with data, refusing to replace a file.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return &ExitError{Code: 2, Err: fmt.Errorf("%s exists: keygen never overwrites a key; choose another file", path)}
	}
	if err != nil {
		return &ExitError{Code: 2, Err: fmt.Errorf("creating %s: %w", path, err)}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func newRotateKeyCmd(o *options) *cobra.Command {
	var oldFile string
	var lost bool
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Introduce a new signing key into the trail, endorsed by the old one",
		Long: `rotate-key records a new signing key (--signing-key-file) for this slot's
trail in the audited database, with a KEY event signed by the new key and
endorsed by the old one (--old-key-file). The next run with the new key sends
that KEY event before its first seal; verify then accepts seals of either key.

When the old key is lost, --lost records the new key without an endorsement:
verify accepts it only when an auditor pins it (--public-key). When the old
key is compromised, rotate with it as usual, then treat seals made after the
compromise as unproven (see docs/guarantees.md).`,
		Example: "  pgaudit-cdc rotate-key --old-key-file old.pem --signing-key-file new.pem\n  pgaudit-cdc rotate-key --lost --signing-key-file new.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.signingKeyFile == "" {
				return usageError("rotate-key needs --signing-key-file NEW: the key to rotate to (pgaudit-cdc keygen --out NEW)")
			}
			if (oldFile == "") == !lost {
				return usageError("rotate-key needs either --old-key-file OLD (the key it replaces, which endorses the new one) or --lost (the old key is gone)")
			}
			newKey, err := trail.LoadKey(o.signingKeyFile)
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			var oldKey *trail.Key
			if !lost {
				if oldKey, err = trail.LoadKey(oldFile); err != nil {
					return &ExitError{Code: 2, Err: err}
				}
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				return rotate(cmd, o, conn, oldKey, newKey)
			})
		},
	}
	cmd.Flags().StringVar(&o.signingKeyFile, "signing-key-file", "", "the new key (env PGAUDIT_SIGNING_KEY_FILE)")
	cmd.Flags().StringVar(&oldFile, "old-key-file", "", "the key being replaced: it endorses the new one")
	cmd.Flags().BoolVar(&lost, "lost", false, "the old key is lost: record the new key without an endorsement (auditors must pin it)")
	return cmd
}

func rotate(cmd *cobra.Command, o *options, conn *pgx.Conn, oldKey, newKey *trail.Key) error {
	ctx := cmd.Context()
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return err
	}
	keys, err := capture.SigningKeys(ctx, conn, o.slot)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return usageError("slot %q has no signing key yet: start run with --signing-key-file %s instead, which introduces it", o.slot, o.signingKeyFile)
	}
	current := keys[len(keys)-1]
	if current.Fingerprint == newKey.Fingerprint() {
		fmt.Fprintf(cmd.OutOrStdout(), "%s is already the trail's key\n", newKey.Fingerprint())
		return nil
	}
	if oldKey != nil && oldKey.Fingerprint() != current.Fingerprint {
		return usageError("--old-key-file holds key %s, but the trail's current key is %s: endorse with that key's file", oldKey.Fingerprint(), current.Fingerprint)
	}
	chain, err := chainOf(current)
	if err != nil {
		return err
	}
	ev, err := trail.KeyEvent(newKey, oldKey, chain, time.Now())
	if err != nil {
		return err
	}
	rec := capture.SigningKey{Fingerprint: newKey.Fingerprint(), PublicKey: trail.EncodePublic(newKey.Public()),
		Previous: current.Fingerprint, KeyEvent: string(ev.Body)}
	if err := capture.AddSigningKey(ctx, conn, o.slot, rec); err != nil {
		return err
	}
	how := "endorsed by " + current.Fingerprint
	if oldKey == nil {
		how = "without an endorsement (the old key is lost): auditors must pin it with verify --public-key"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "recorded %s as the trail's key, %s; restart run with --signing-key-file %s\n", newKey.Fingerprint(), how, o.signingKeyFile)
	return nil
}

// chainOf reads the chain name from a recorded KEY event.
func chainOf(k capture.SigningKey) (string, error) {
	var e struct {
		Payload struct {
			Key trail.KeyRecord `json:"key"`
		} `json:"payload"`
	}
	if err := json.Unmarshal([]byte(k.KeyEvent), &e); err != nil || e.Payload.Key.Chain == "" {
		return "", fmt.Errorf("reading the chain of key %s from its KEY event: the record is damaged (%v)", k.Fingerprint, err)
	}
	return e.Payload.Key.Chain, nil
}
