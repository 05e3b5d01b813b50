package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/natsjs"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// maxChunkRows bounds checkpoint --chunk-rows: each row adds 16 base64
// characters (12 bytes) of pairs to its chunk's CHECKPOINT event, so a
// chunk of 100,000 rows is an event of about 1.6 MB, within a spine's or a
// proxy's body limit (a refused event would leave verify missing a chunk).
// The backfill's --chunk-size has its own bound, maxChunkSize.
const maxChunkRows = 100000

func newCheckpointCmd(o *options) *cobra.Command {
	var lockTimeout time.Duration
	var chunkRows int
	cmd := &cobra.Command{
		Use:   "checkpoint TABLE",
		Short: "Write a digest of a watched table's rows into the audit trail, for verify",
		Long: `checkpoint reads the table in chunks by primary key (--chunk-rows rows each). Each
chunk is one short transaction that holds a SHARE lock (writers wait for that chunk
only, readers do not), and writes the chunk's row count, an order-independent digest of
its rows and a 6-byte hash of each row's key and value into the WAL in that
transaction. The agent ('run') turns each chunk into a CHECKPOINT event at exactly its
point of commit order, and 'pgaudit-cdc verify' compares it with the table folded from
the audit trail, naming the keys that differ. A table without a primary key is read in
one chunk: writers wait for the whole scan, and verify compares counts and digests only.`,
		Example: `  pgaudit-cdc checkpoint decisions
  pgaudit-cdc checkpoint billing.invoices --lock-timeout 30s --chunk-rows 5000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if lockTimeout <= 0 {
				return usageError("invalid --lock-timeout %s: use a positive duration, e.g. 10s", lockTimeout)
			}
			if chunkRows < 1 || chunkRows > maxChunkRows {
				return usageError("invalid --chunk-rows %d: use 1 to %d rows per chunk (each chunk holds the table's SHARE lock while it reads, and is one CHECKPOINT event of about 16 bytes per row)", chunkRows, maxChunkRows)
			}
			t, err := watches.ParseTableName(args[0])
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				oid, err := tableOID(cmd.Context(), conn, t)
				if err != nil {
					return err
				}
				errOut := cmd.ErrOrStderr()
				tty := isTerminal(errOut)
				res, err := backfill.Checkpoint(cmd.Context(), conn, oid, backfill.CheckpointOptions{
					LockTimeout: lockTimeout,
					ChunkRows:   chunkRows,
					OnRows: func(n int64) {
						if tty {
							fmt.Fprintf(errOut, "\rcheckpoint %s: %d rows", ident.Qualified(t.Schema, t.Name), n)
						}
					},
				})
				if tty {
					fmt.Fprintln(errOut)
				}
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "checkpoint %d of %s: %d rows in %d chunks, digest %s (the agent records each chunk as a CHECKPOINT event); the longest chunk held the table's SHARE lock for %s\n",
					res.ID, res.Table, res.Rows, res.Chunks, res.Digest, res.LongestLock.Round(time.Millisecond))
				if len(res.KeyColumns) == 0 {
					fmt.Fprintf(out, "%s has no primary key: it was read in one chunk (writers waited for the whole scan), and verify can compare its rows as a whole but not name the keys that differ\n", res.Table)
				}
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 10*time.Second, "longest wait for the SHARE lock on the table, per chunk")
	cmd.Flags().IntVar(&chunkRows, "chunk-rows", backfill.DefaultChunkRows, "rows per chunk, 1 to 100000 (each chunk is one transaction holding the table's SHARE lock, and one CHECKPOINT event of about 16 bytes per row)")
	return cmd
}

func tableOID(ctx context.Context, conn *pgx.Conn, t watches.TableName) (uint32, error) {
	oid, err := watches.LookupOID(ctx, conn, t)
	if errors.Is(err, watches.ErrTableNotFound) {
		return 0, &ExitError{Code: 2, Err: err}
	}
	return oid, err
}

func newVerifyCmd(o *options) *cobra.Command {
	var asJSON, allowUnsigned bool
	var publicKeys []string
	var anchorFile string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Prove the audit trail complete and faithful: chain, links, checkpoints",
		Long: `verify reads the whole chain from the spine and reports, each as a pass or a fail
with the first offending event:

  chain integrity  every hash recomputed here, in Go, and every link checked (the
                   spine's own /verify is not trusted: its host is what an auditor
                   may not trust)
  completeness     every pgaudit-cdc event names its predecessor and its place in its
                   transaction: no event missing, none duplicated, none out of commit
                   order unless marked late; a declared GAP fails with its known cause
  faithfulness     each table folded from its events up to each CHECKPOINT chunk matches
                   the digest PostgreSQL's rows gave there; on a mismatch, the keys that
                   differ are named (the first 20 here, up to 10,000 with --json)
  authenticity     every event that claims to be pgaudit-cdc's is covered by a seal the
                   agent's key signed, with the content it sealed: an event forged by
                   another producer, or removed, altered or re-linked by the spine's
                   host, fails; so does an unknown key, and an unsigned trail unless
                   --allow-unsigned

The trusted keys are those pinned with --public-key (a PEM or base64 public key, or
the private key file), else the keys recorded in the audited database
(--database-url), else the first key the trail introduces (named in the report).
With --database-url, the trail must also reach the newest seal the database anchored
(a tail cut from the trail fails), and pending dead letters explain the holes they
leave. Exit codes: 0 everything verified, 1 a failure was found, 2 usage.`,
		Example: `  AUDIT_STREAM_URL=http://audit-stream:8093 pgaudit-cdc verify
  pgaudit-cdc verify --audit-stream-url http://audit-stream:8093 --json | jq .failures`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.auditStreamURL == "" && o.nats.urls == "" {
				return usageError("verify reads the chain from the spine: set --audit-stream-url or AUDIT_STREAM_URL (or --nats-url for a JetStream trail)")
			}
			opts, err := o.verifyOptions(cmd, publicKeys, anchorFile, allowUnsigned)
			if err != nil {
				return err
			}
			v := verify.New(opts)
			if err := o.walkTrail(cmd.Context(), v, cmd.ErrOrStderr()); err != nil {
				return fmt.Errorf("reading the chain: %w", err)
			}
			rep := v.Finish()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printReport(cmd.OutOrStdout(), &rep)
			}
			if !rep.OK() {
				return &ExitError{Code: 1, Err: fmt.Errorf("the audit trail did not verify: %d failures (the first: %s)", len(rep.Failures), rep.Failures[0].Detail)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringArrayVar(&publicKeys, "public-key", nil, "a public key file (PEM or base64; or the private key file) the trail's seals must be signed with; repeat for rotated keys")
	cmd.Flags().StringVar(&anchorFile, "anchor-file", "", "the anchor file run --anchor-file writes: the trail must reach its newest seal")
	cmd.Flags().BoolVar(&allowUnsigned, "allow-unsigned", false, "accept a trail without seals (pgaudit-cdc ran --unsigned) instead of failing authenticity")
	return cmd
}

// verifyOptions gathers what the trail is verified against: the pinned
// public keys, the anchor file's newest seal, and, with --database-url, the
// keys and anchor the database recorded and its pending dead letters.
func (o *options) verifyOptions(cmd *cobra.Command, publicKeys []string, anchorFile string, allowUnsigned bool) (verify.Options, error) {
	opts := verify.Options{Slot: o.slot, Trail: trail.VerifyOptions{AllowUnsigned: allowUnsigned}}
	for _, file := range publicKeys {
		pub, err := readPublicKey(file)
		if err != nil {
			return opts, err
		}
		opts.Trail.Trusted = append(opts.Trail.Trusted, pub)
	}
	if anchorFile != "" {
		a, ok, err := trail.LastAnchor(anchorFile)
		if err != nil {
			return opts, &ExitError{Code: 2, Err: err}
		}
		if ok {
			opts.Trail.Anchor = &a
		}
	}
	if o.databaseURL != "" {
		if err := o.withConn(cmd, func(conn *pgx.Conn) error {
			var err error
			if opts.DeadLetters, err = pendingDeadLetters(cmd.Context(), conn, o.slot); err != nil {
				return err
			}
			return trailFromDatabase(cmd.Context(), conn, o.slot, &opts.Trail, len(publicKeys) == 0)
		}); err != nil {
			return opts, err
		}
	}
	return opts, nil
}

// walkTrail feeds the whole trail to v: the spine's chain, or the
// JetStream stream's messages in sequence order.
func (o *options) walkTrail(ctx context.Context, v *verify.Verifier, errOut io.Writer) error {
	start := time.Now()
	progress := func(done, total int64) {
		fmt.Fprintf(errOut, "verify: %d of %d events read (%s)\n", done, total, time.Since(start).Round(time.Second))
	}
	if o.nats.urls != "" {
		js, err := o.natsClient(nil, publish.Hooks{})
		if err != nil {
			return err
		}
		defer js.Close()
		n := int64(0)
		return js.Scan(ctx, 1, func(seq uint64, data []byte) {
			if e, err := natsjs.Parse(seq, data); err != nil {
				v.NotChained(int64(seq), err.Error())
			} else {
				v.Add(e)
			}
			if n++; n%100000 == 0 {
				progress(n, -1)
			}
		})
	}
	spine, err := o.spineClient(nil, publish.Hooks{})
	if err != nil {
		return err
	}
	return spine.Walk(ctx, func(e chain.Event) error { v.Add(e); return nil }, progress)
}

// readPublicKey reads a public key file for --public-key.
func readPublicKey(file string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("reading --public-key %s: %w", file, err)}
	}
	pub, err := trail.ParsePublic(string(data))
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("--public-key %s: %w: give the PEM file keygen --public-out wrote", file, err)}
	}
	return pub, nil
}

// trailFromDatabase takes the anchor recorded in the audited database, and
// unless keys were pinned, the keys recorded there as the trusted ones.
func trailFromDatabase(ctx context.Context, conn *pgx.Conn, slot string, o *trail.VerifyOptions, trustRecorded bool) error {
	anchor, ok, err := capture.LoadAnchor(ctx, conn, slot)
	if err != nil {
		return err
	}
	if ok && !anchor.LostAcknowledged && (o.Anchor == nil || o.Anchor.Seq < anchor.Seq) {
		o.Anchor = &anchor.Anchor
	}
	if !trustRecorded {
		return nil
	}
	keys, err := capture.SigningKeys(ctx, conn, slot)
	if err != nil {
		return err
	}
	for _, k := range keys {
		pub, err := trail.ParsePublic(k.PublicKey)
		if err != nil {
			return fmt.Errorf("the signing key %s recorded in the database is damaged: %w", k.Fingerprint, err)
		}
		o.Trusted = append(o.Trusted, pub)
	}
	return nil
}

func printReport(w io.Writer, rep *verify.Report) {
	fmt.Fprintf(w, "%d events in the chain, %d from pgaudit-cdc (slot), %d checkpoints\n", rep.Events, rep.Ours, rep.Checkpoints)
	for _, r := range rep.Results {
		mark := "PASS"
		if !r.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: %s\n", mark, r.Check, r.Detail)
		if r.EventID != 0 && !r.Pass {
			fmt.Fprintf(w, "      first offending event: %d\n", r.EventID)
		}
		if r.KnownCause != "" {
			fmt.Fprintf(w, "      known cause: %s\n", r.KnownCause)
		}
		if r.KeysTotal > 0 {
			fmt.Fprintf(w, "      keys that differ (%d):\n", r.KeysTotal)
			for i, k := range r.Keys {
				if i == textKeys {
					break
				}
				fmt.Fprintf(w, "        %s\n", k)
			}
			if r.KeysTotal > min(len(r.Keys), textKeys) {
				fmt.Fprintf(w, "        … and %d more (--json lists up to %d)\n", r.KeysTotal-min(len(r.Keys), textKeys), verify.MaxKeys)
			}
		}
	}
}

// textKeys is how many differing keys the text report lists per failure.
const textKeys = 20

func pendingDeadLetters(ctx context.Context, conn *pgx.Conn, slot string) (map[string]envelope.Position, error) {
	return deadletters.New(conn, slot).Positions(ctx)
}
