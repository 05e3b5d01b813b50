package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// maxChunkSize bounds backfill --chunk-size: a chunk is one WAL message,
// which the agent decodes whole (its rows become one READ event each).
// checkpoint --chunk-rows has its own bound, maxChunkRows.
const maxChunkSize = 1000000

func newBackfillCmd(o *options) *cobra.Command {
	var chunk int
	cmd := &cobra.Command{
		Use:   "backfill TABLE",
		Short: "Send the rows a watched table already holds as READ events, while the live stream flows",
		Long: `backfill reads the table in primary-key chunks and writes each chunk into the WAL,
where the agent turns it into READ events in commit order with the live changes:
a row changed during the backfill never appears with a stale READ after its newer
change. Interrupted, it resumes after the last chunk when run again. The table
must be watched and have a primary key. The agent ('run') delivers the events.`,
		Example: `  pgaudit-cdc backfill decisions
  pgaudit-cdc backfill billing.invoices --chunk-size 5000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if chunk < 1 || chunk > maxChunkSize {
				return usageError("invalid --chunk-size %d: use 1 to %d rows per chunk (each chunk is one transaction and one WAL message the agent holds in memory)", chunk, maxChunkSize)
			}
			t, err := watches.ParseTableName(args[0])
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				return runBackfill(cmd, conn, t, chunk)
			})
		},
	}
	cmd.Flags().IntVar(&chunk, "chunk-size", 1000, "rows per chunk, 1 to 1000000 (one transaction and one WAL message each)")
	return cmd
}

func runBackfill(cmd *cobra.Command, conn *pgx.Conn, t watches.TableName, chunk int) error {
	var oid uint32
	err := conn.QueryRow(cmd.Context(), `SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("table %s does not exist", ident.Qualified(t.Schema, t.Name))
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", ident.Qualified(t.Schema, t.Name), err)
	}
	errOut := cmd.ErrOrStderr()
	tty := isTerminal(errOut)
	start := time.Now()
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
		return err
	}
	resumed := ""
	if p.Resumed {
		resumed = " (resumed)"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "backfill %d of %s done%s: %d rows in %d chunks, %s; the agent delivers them as READ events\n",
		p.ID, p.Table, resumed, p.Rows, p.Chunks, time.Since(start).Round(time.Millisecond))
	return nil
}
