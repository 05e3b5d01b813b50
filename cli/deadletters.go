package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/deadletters"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

type deadLetter = deadletters.Letter

func newDeadLettersCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "dead-letters",
		Aliases: []string{"dead-letter", "dl"},
		Short:   "Manage events the spine refused (kept in pgaudit_cdc.dead_letters)",
		Example: `  pgaudit-cdc dead-letters list
  pgaudit-cdc dead-letters retry --all     # after fixing the cause, in original order
  pgaudit-cdc dead-letters discard 42`,
	}
	cmd.AddCommand(newDeadLettersListCmd(o), newDeadLettersRetryCmd(o), newDeadLettersDiscardCmd(o))
	return cmd
}

func newDeadLettersListCmd(o *options) *cobra.Command {
	var asJSON bool
	list := &cobra.Command{
		Use:     "list",
		Short:   "List dead letters of this slot, oldest change first",
		Example: "  pgaudit-cdc dead-letters list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				dls, err := loadDeadLetters(cmd.Context(), conn, o.slot, nil)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if dls == nil {
						dls = []deadLetter{}
					}
					return enc.Encode(dls)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tFAILED AT\tTABLE\tOPERATION\tKIND\tSTATUS\tRESPONSE")
				for _, d := range dls {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.FailedAt.UTC().Format(time.RFC3339), d.Table, d.Operation, d.Kind, d.Status, oneLine(d.Response, 80))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return list
}

// redeliverer is the destination a dead letter is retried into: the spine,
// or the JetStream stream (which refuses no event for good).
type redeliverer interface {
	Redeliver(ctx context.Context, source string, ev *envelope.Event) error
}

func newDeadLettersRetryCmd(o *options) *cobra.Command {
	var retryAll bool
	retry := &cobra.Command{
		Use:   "retry [ID...] | --all",
		Short: "Send dead letters to the spine again, in original commit order; removed once accepted",
		Example: `  pgaudit-cdc dead-letters retry --all
  pgaudit-cdc dead-letters retry 3 4`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := parseIDs(args, retryAll)
			if err != nil {
				return err
			}
			log, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			var dest redeliverer
			if o.nats.urls != "" {
				js, err := o.natsClient(log, publish.Hooks{})
				if err != nil {
					return err
				}
				defer js.Close()
				dest = js
			} else {
				c, err := o.spineClient(log, publish.Hooks{})
				if err != nil {
					return err
				}
				if c == nil {
					return &ExitError{Code: 2, Err: errors.New("retrying needs the destination: set --audit-stream-url or AUDIT_STREAM_URL (or --nats-url)")}
				}
				dest = c
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				return o.retryDeadLetters(cmd, conn, dest, ids)
			})
		},
	}
	retry.Flags().BoolVar(&retryAll, "all", false, "retry every dead letter of this slot")
	return retry
}

// retryDeadLetters sends the dead letters ids (nil: all) to dest in their
// original order: one accepted is removed, one refused again is kept with
// the new answer.
func (o *options) retryDeadLetters(cmd *cobra.Command, conn *pgx.Conn, dest redeliverer, ids []int64) error {
	dls, err := loadDeadLetters(cmd.Context(), conn, o.slot, ids)
	if err != nil {
		return err
	}
	awaitCutOffRetries(cmd, dls, dest)
	store := deadletters.New(conn, o.slot)
	sent, failed := 0, 0
	for _, d := range dls {
		// A letter that cannot be sent is never marked as being sent.
		ev, err := envelope.ParseKept(d.Key, []byte(d.Envelope))
		if err != nil {
			return fmt.Errorf("retrying dead letter %d: %w", d.ID, err)
		}
		if err := store.Sending(cmd.Context(), d.ID); err != nil {
			return err
		}
		err = dest.Redeliver(cmd.Context(), d.Source, ev)
		var rej *publish.RejectedError
		switch {
		case errors.As(err, &rej):
			failed++
			if uerr := store.RefusedAgain(cmd.Context(), d.ID, rej.StatusCode, rej.Body); uerr != nil {
				return uerr
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dead letter %d refused again (HTTP %d): %s\n", d.ID, rej.StatusCode, oneLine(rej.Body, 200))
		case err != nil:
			return fmt.Errorf("retrying dead letter %d: %w", d.ID, err)
		default:
			if err := store.Delivered(cmd.Context(), d.ID); err != nil {
				return err
			}
			sent++
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%d delivered, %d refused again\n", sent, failed)
	if failed > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("%d dead letters were refused again", failed)}
	}
	return nil
}

// inFlightWaiter is a destination whose read-backs can be told to wait for
// requests someone else may have left in flight (publish.Client; JetStream
// de-duplicates by message ID and needs no wait).
type inFlightWaiter interface {
	SettleTime() time.Duration
	InFlightUntil(time.Time)
}

// awaitCutOffRetries makes the first read-back wait when an earlier retry
// was cut off while sending one of dls: the spine may still be appending
// it, and a read-back before that would send it twice.
func awaitCutOffRetries(cmd *cobra.Command, dls []deadLetter, dest redeliverer) {
	w, ok := dest.(inFlightWaiter)
	if !ok {
		return
	}
	for _, d := range dls {
		if d.CutOff {
			settle := w.SettleTime()
			fmt.Fprintf(cmd.ErrOrStderr(), "an earlier retry of dead letter %d was cut off while sending it: waiting %s for the spine to finish any request it left before checking what it holds\n", d.ID, settle)
			w.InFlightUntil(time.Now().Add(settle))
			return
		}
	}
}

func newDeadLettersDiscardCmd(o *options) *cobra.Command {
	var discardAll bool
	discard := &cobra.Command{
		Use:     "discard [ID...] | --all",
		Short:   "Delete dead letters without sending them",
		Example: "  pgaudit-cdc dead-letters discard 42",
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := parseIDs(args, discardAll)
			if err != nil {
				return err
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				if _, err := migrations.Apply(cmd.Context(), conn); err != nil {
					return err
				}
				n, err := deadletters.New(conn, o.slot).Discard(cmd.Context(), ids)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d discarded\n", n)
				return nil
			})
		},
	}
	discard.Flags().BoolVar(&discardAll, "all", false, "discard every dead letter of this slot")
	return discard
}

func parseIDs(args []string, all bool) ([]int64, error) {
	if all == (len(args) > 0) {
		return nil, &ExitError{Code: 2, Err: errors.New("name dead letter IDs or pass --all (not both)")}
	}
	if all {
		return nil, nil
	}
	ids := make([]int64, 0, len(args))
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			return nil, &ExitError{Code: 2, Err: fmt.Errorf("invalid dead letter ID %q", a)}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func loadDeadLetters(ctx context.Context, conn *pgx.Conn, slot string, ids []int64) ([]deadLetter, error) {
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return nil, err
	}
	return deadletters.New(conn, slot).List(ctx, ids)
}

func oneLine(s string, n int) string {
	b := []rune(s)
	for i, r := range b {
		if r == '\n' || r == '\r' || r == '\t' {
			b[i] = ' '
		}
	}
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
