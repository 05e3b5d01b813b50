package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/migrations"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// maxChunkSize bounds backfill --chunk-size: a chunk is one WAL message,
// which the agent decodes whole (its rows become one READ event each).
// checkpoint --chunk-rows has its own bound, maxChunkRows.
const maxChunkSize = 1000000

// ExitPending is backfill's exit code when its rows are written but no
// agent delivers them: they wait in the slot for `run`.
const ExitPending = 4

// deliveryIdle is how long backfill waits for an agent to stream the slot
// before it says delivery is pending and exits.
const deliveryIdle = 10 * time.Second

type backfillOptions struct {
	chunk         int
	noWait, again bool
}

func newBackfillCmd(o *options) *cobra.Command {
	var bo backfillOptions
	cmd := &cobra.Command{
		Use:   "backfill TABLE",
		Short: "Send the rows a watched table already holds as READ events, while the live stream flows",
		Long: `backfill reads the table in primary-key chunks and writes each chunk into the WAL,
where the agent turns it into READ events in commit order with the live changes:
a row changed during the backfill never appears with a stale READ after its newer
change. Interrupted, it resumes after the last chunk when run again. The table
must be watched and have a primary key.

The agent ('run') delivers the events. backfill waits until it has: until the
slot's confirmed position reaches the backfill's end, so that every READ event
was accepted by the spine (progress on a terminal). When no agent streams the
slot for 10 s it stops waiting and exits 4: delivery is pending, and 'status'
shows it. --no-wait returns once the chunks are written.

Run again while a backfill of the table is written but not delivered, it waits
for that one rather than sending every row a second time; --again sends a
second baseline anyway.`,
		Example: `  pgaudit-cdc backfill decisions
  pgaudit-cdc backfill billing.invoices --chunk-size 5000 --no-wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bo.chunk < 1 || bo.chunk > maxChunkSize {
				return usageError("invalid --chunk-size %d: use 1 to %d rows per chunk (each chunk is one transaction and one WAL message the agent holds in memory)", bo.chunk, maxChunkSize)
			}
			t, err := watches.ParseTableName(args[0])
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				return runBackfill(cmd, conn, o.slot, t, bo)
			})
		},
	}
	cmd.Flags().IntVar(&bo.chunk, "chunk-size", 1000, "rows per chunk, 1 to 1000000 (one transaction and one WAL message each)")
	cmd.Flags().BoolVar(&bo.noWait, "no-wait", false, "return once the chunks are written, without waiting for the agent to deliver them")
	cmd.Flags().BoolVar(&bo.again, "again", false, "send a second baseline even though the last backfill of the table is not delivered yet")
	return cmd
}

func runBackfill(cmd *cobra.Command, conn *pgx.Conn, slot string, t watches.TableName, bo backfillOptions) error {
	ctx := cmd.Context()
	oid, err := watches.LookupOID(ctx, conn, t)
	if err != nil {
		return err
	}
	if _, err := migrations.Apply(ctx, conn); err != nil {
		return err
	}
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	start := time.Now()
	p, err := pendingBackfill(cmd, conn, slot, oid, bo.again)
	if err != nil {
		return err
	}
	if p == nil {
		if p, err = writeBackfill(cmd, conn, oid, bo.chunk); err != nil {
			return err
		}
		resumed := ""
		if p.Resumed {
			resumed = " (resumed)"
		}
		fmt.Fprintf(out, "backfill %d of %s written%s: %d rows in %d chunks, %s\n",
			p.ID, p.Table, resumed, p.Rows, p.Chunks, time.Since(start).Round(time.Millisecond))
	}
	if bo.noWait {
		fmt.Fprintf(out, "backfill %d of %s: delivery pending; the agent (slot %s) delivers the rows as READ events, and pgaudit-cdc status lists the backfill until it has\n", p.ID, p.Table, slot)
		return nil
	}
	return awaitDelivery(cmd, conn, slot, p, out, errOut, start)
}

// pendingBackfill returns the written, undelivered backfill of the table,
// said so, unless again asks for a new one.
func pendingBackfill(cmd *cobra.Command, conn *pgx.Conn, slot string, oid uint32, again bool) (*backfill.Progress, error) {
	pending, err := backfill.ListPending(cmd.Context(), conn, slot)
	if err != nil {
		return nil, err
	}
	for _, b := range pending {
		if b.TableOID != oid || !b.Written {
			continue
		}
		if again {
			fmt.Fprintf(cmd.ErrOrStderr(), "backfill %d of %s is not delivered yet; --again sends a second baseline: its rows reach the trail twice\n", b.ID, b.Table)
			return nil, nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "backfill %d of %s (%d rows) is written and its delivery is pending: waiting for it instead of sending the rows again (--again sends a second baseline)\n",
			b.ID, b.Table, b.Rows)
		return &backfill.Progress{ID: b.ID, Table: b.Table, Rows: b.Rows, Done: true, EndLSN: b.EndLSN}, nil
	}
	return nil, nil
}

// writeBackfill writes the chunks, with progress on a terminal.
func writeBackfill(cmd *cobra.Command, conn *pgx.Conn, oid uint32, chunk int) (*backfill.Progress, error) {
	errOut := cmd.ErrOrStderr()
	tty := isTerminal(errOut)
	last := time.Time{}
	p, err := backfill.Run(cmd.Context(), conn, oid, backfill.Options{
		ChunkSize: chunk,
		OnChunk: func(p backfill.Progress) {
			if !tty || (time.Since(last) < 200*time.Millisecond && !p.Done) {
				return
			}
			last = time.Now()
			pct := ""
			if p.Estimate > 0 {
				pct = fmt.Sprintf(" (~%d%%)", min(100, p.Rows*100/p.Estimate))
			}
			fmt.Fprintf(errOut, "\rbackfill %s: %d rows%s, %d chunks", p.Table, p.Rows, pct, p.Chunks)
		},
	})
	if tty {
		fmt.Fprintln(errOut)
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// awaitDelivery waits until the agent delivered the backfill, or no agent
// streams the slot (exit ExitPending).
func awaitDelivery(cmd *cobra.Command, conn *pgx.Conn, slot string, p *backfill.Progress, out, errOut io.Writer, start time.Time) error {
	tty := isTerminal(errOut)
	last := time.Time{}
	delivered, err := backfill.WaitDelivered(cmd.Context(), conn, slot, p.ID, p.EndLSN, deliveryIdle, func(d backfill.Delivery) {
		if !tty || time.Since(last) < 200*time.Millisecond {
			return
		}
		last = time.Now()
		agent := "agent streaming"
		if !d.AgentConnected {
			agent = "no agent connected"
		}
		toGo := int64(d.ToGo())
		fmt.Fprintf(errOut, "\rbackfill %d of %s: delivering, %s of WAL to go (%s)   ", p.ID, p.Table, humanBytes(&toGo), agent)
	})
	if tty {
		fmt.Fprintln(errOut)
	}
	if err != nil {
		return fmt.Errorf("waiting for the delivery of backfill %d of %s (its rows are written; run the backfill again to go on waiting): %w", p.ID, p.Table, err)
	}
	if !delivered {
		return &ExitError{Code: ExitPending, Err: fmt.Errorf("backfill %d of %s: %d rows written, delivery pending: no agent has streamed slot %s for %s; start pgaudit-cdc run to deliver them (pgaudit-cdc status lists the backfill until then)",
			p.ID, p.Table, p.Rows, slot, deliveryIdle)}
	}
	fmt.Fprintf(out, "backfill %d of %s delivered: %d rows as READ events, %s after it began\n",
		p.ID, p.Table, p.Rows, time.Since(start).Round(time.Millisecond))
	return nil
}
