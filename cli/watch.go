package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
	"github.com/pgaudit-cdc/pgaudit-cdc/watches"
)

// watchFlags are watch's flags.
type watchFlags struct {
	kind, source, where, schema string
	columns, exclude, onColumns []string
	backfill                    bool
}

func newWatchCmd(o *options) *cobra.Command {
	var f watchFlags
	cmd := &cobra.Command{
		Use:   "watch TABLE --kind KIND --source SOURCE",
		Short: "Audit a table: register it, publish it, and start capturing its changes now",
		Long: `watch registers TABLE (schema public unless qualified; quote mixed-case names),
adds it to the publication and sets REPLICA IDENTITY FULL so that UPDATE and DELETE
carry the whole old row. The publication and slot are created when missing, so
changes are captured from now on even before 'run' starts. Watching a watched
table updates its kind and source in place. The kind must be one the spine
accepts (its /openapi.json when --audit-stream-url is reachable, else the
audit-stream v0.1 list).`,
		Example: `  pgaudit-cdc watch decisions --kind decision_card_status_changed --source procurement-api
  pgaudit-cdc watch billing.invoices --kind other --source billing --where "status <> 'draft'"
  pgaudit-cdc watch users --kind other --source accounts --exclude-columns ssn,password_hash
  pgaudit-cdc watch decisions --kind other --source api --on-columns status,amount --backfill
  pgaudit-cdc watch --schema billing --kind other --source billing
  pgaudit-cdc watch '"Mixed Case"."odd ""name"""' --kind other --source legacy`,
		Args: func(cmd *cobra.Command, args []string) error {
			if f.schema != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := f.target(args)
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			log, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			if err := checkKind(cmd.Context(), o, f.kind, log); err != nil {
				return err
			}
			return o.withConn(cmd, func(conn *pgx.Conn) error { return f.watch(cmd, o, conn, t) })
		},
	}
	cmd.Flags().StringVar(&f.kind, "kind", "", "event kind of this table's changes (required)")
	cmd.Flags().StringVar(&f.source, "source", "", "event source of this table's changes (required)")
	cmd.Flags().StringVar(&f.where, "where", "", "audit only rows matching this SQL expression, evaluated by the server (PostgreSQL 15+)")
	cmd.Flags().StringSliceVar(&f.columns, "columns", nil, "send only these columns (and the primary key), enforced by the server (PostgreSQL 15+)")
	cmd.Flags().StringSliceVar(&f.exclude, "exclude-columns", nil, "never send these columns, enforced by the server (PostgreSQL 15+)")
	cmd.Flags().StringSliceVar(&f.onColumns, "on-columns", nil, "emit an UPDATE only when one of these columns changed")
	cmd.Flags().StringVar(&f.schema, "schema", "", "watch every table of this schema, including later ones (instead of TABLE)")
	cmd.Flags().BoolVar(&f.backfill, "backfill", false, "then send the rows the table already holds as READ events")
	_ = cmd.MarkFlagRequired("kind")
	_ = cmd.MarkFlagRequired("source")
	return cmd
}

// target checks the flags and returns the table to watch (none with
// --schema); its errors are the user's to fix.
func (f *watchFlags) target(args []string) (watches.TableName, error) {
	var t watches.TableName
	if strings.TrimSpace(f.source) == "" {
		return t, fmt.Errorf("--source is required and must not be empty")
	}
	if f.schema != "" {
		if f.where != "" || len(f.columns)+len(f.exclude)+len(f.onColumns) > 0 || f.backfill {
			return t, fmt.Errorf("--where, --columns, --exclude-columns, --on-columns and --backfill apply to one table, not to --schema")
		}
		return t, watches.CheckWatchableSchema(f.schema)
	}
	t, err := watches.ParseTableName(args[0])
	if err != nil {
		return t, err
	}
	if err := watches.CheckWatchable(t); err != nil {
		return t, err
	}
	if len(f.columns) > 0 && len(f.exclude) > 0 {
		return t, fmt.Errorf("use --columns or --exclude-columns, not both")
	}
	if len(f.columns)+len(f.exclude) > 0 && len(f.onColumns) > 0 {
		return t, fmt.Errorf("--on-columns compares the old and new rows, which --columns/--exclude-columns prevent (old rows then carry the key only): use one or the other")
	}
	return t, nil
}

// watch registers the schema, or table t, and backfills it when asked.
func (f *watchFlags) watch(cmd *cobra.Command, o *options, conn *pgx.Conn, t watches.TableName) error {
	reg := watches.NewRegistry(conn, o.publication, o.slot)
	if f.schema != "" {
		if err := withProgress(cmd.ErrOrStderr(), "watching schema "+f.schema+" (slot creation waits for open transactions)", func() error {
			return reg.WatchSchema(cmd.Context(), f.schema, f.kind, f.source)
		}); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "schema %s\n", f.schema)
		return nil
	}
	var name string
	err := withProgress(cmd.ErrOrStderr(), "watching "+ident.Qualified(t.Schema, t.Name)+" (slot creation waits for open transactions)", func() error {
		var err error
		name, err = reg.Watch(cmd.Context(), t, f.kind, f.source, watches.Options{
			RowFilter: f.where, Columns: f.columns, ExcludeColumns: f.exclude, OnColumns: f.onColumns})
		return err
	})
	if err != nil {
		return explainWhere(err, f.where)
	}
	fmt.Fprintln(cmd.OutOrStdout(), name)
	if f.backfill {
		// The agent may not run yet (a first watch): say the delivery is
		// pending rather than wait for it.
		return runBackfill(cmd, conn, o.slot, t, backfillOptions{noWait: true})
	}
	return nil
}

// explainWhere turns the server's refusal of a --where expression into an
// exit-2 error with the server's message and the fix. The row filter is
// checked by PostgreSQL when the table is added to the publication: syntax
// errors (42601), unknown columns (42703), type, function and operator
// errors (SQLSTATE classes 42 and 22), and what a row filter may not use
// (0A000: mutable or user-defined functions, subqueries) are the user's to
// fix.
func explainWhere(err error, where string) error {
	var pgErr *pgconn.PgError
	if where == "" || !errors.As(err, &pgErr) {
		return err
	}
	userFault := pgerrcode.IsSyntaxErrororAccessRuleViolation(pgErr.Code) || pgerrcode.IsDataException(pgErr.Code) ||
		pgErr.Code == pgerrcode.FeatureNotSupported
	if !userFault || pgErr.Code == pgerrcode.InsufficientPrivilege {
		return err // a missing privilege is not the expression's fault
	}
	msg := pgErr.Message
	if pgErr.Detail != "" {
		msg += " (" + pgErr.Detail + ")"
	}
	if pgErr.Hint != "" {
		msg += "; hint: " + pgErr.Hint
	}
	return usageError("PostgreSQL refused --where %q: %s (SQLSTATE %s): fix the expression; it must be a boolean SQL expression over the table's own columns using only immutable built-in functions and operators, e.g. --where \"status <> 'draft'\"", where, msg, pgErr.Code)
}

// checkKind refuses a kind the spine would reject, listing the accepted ones.
func checkKind(ctx context.Context, o *options, kind string, log interface {
	Warn(msg string, args ...any)
}) error {
	accepted := publish.DefaultKinds
	from := "the audit-stream v0.1 kinds"
	if o.auditStreamURL != "" {
		c, err := o.spineClient(nil, publish.Hooks{})
		if err != nil {
			return err
		}
		kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kinds, err := c.Kinds(kctx)
		cancel()
		if err != nil {
			log.Warn("could not ask the spine which kinds it accepts; checking against the audit-stream v0.1 list", "err", err)
		} else {
			accepted, from = kinds, "the kinds the spine advertises"
		}
	}
	if !slices.Contains(accepted, kind) {
		return &ExitError{Code: 2, Err: fmt.Errorf("kind %q is not accepted (checked against %s); use one of: %s", kind, from, strings.Join(accepted, ", "))}
	}
	return nil
}

func newUnwatchCmd(o *options) *cobra.Command {
	var schema string
	cmd := &cobra.Command{
		Use:   "unwatch TABLE",
		Short: "Stop auditing a table (idempotent; works after the table was dropped)",
		Example: `  pgaudit-cdc unwatch decisions
  pgaudit-cdc unwatch billing.invoices
  pgaudit-cdc unwatch --schema billing`,
		Args: func(cmd *cobra.Command, args []string) error {
			if schema != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				reg := watches.NewRegistry(conn, o.publication, o.slot)
				if schema != "" {
					removed, err := reg.UnwatchSchema(cmd.Context(), schema)
					if err != nil {
						return err
					}
					if removed {
						fmt.Fprintf(cmd.OutOrStdout(), "unwatched schema %s\n", schema)
					} else {
						fmt.Fprintf(cmd.OutOrStdout(), "schema %s was not watched; nothing to do\n", schema)
					}
					return nil
				}
				t, err := watches.ParseTableName(args[0])
				if err != nil {
					return &ExitError{Code: 2, Err: err}
				}
				removed, err := reg.Unwatch(cmd.Context(), t)
				if err != nil {
					return err
				}
				name := ident.Qualified(t.Schema, t.Name)
				if removed {
					fmt.Fprintf(cmd.OutOrStdout(), "unwatched %s\n", name)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s was not watched; nothing to do\n", name)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&schema, "schema", "", "remove a schema-wide watch (instead of TABLE)")
	return cmd
}

func newListCmd(o *options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the watched tables: table, kind, source, since when",
		Example: "  pgaudit-cdc list\n  pgaudit-cdc list --all   # include unwatched tables kept as tombstones",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.withConn(cmd, func(conn *pgx.Conn) error {
				entries, err := watches.NewRegistry(conn, o.publication, o.slot).List(cmd.Context(), all)
				if err != nil {
					return err
				}
				schemas, err := watches.LoadSchemas(cmd.Context(), conn, all)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TABLE\tKIND\tSOURCE\tSINCE\tACTIVE\tOPTIONS")
				for _, e := range schemas {
					fmt.Fprintf(tw, "%s.*\t%s\t%s\t%s\t%t\t%s\n", ident.Quote(e.Schema), e.Kind, e.Source, e.CreatedAt.UTC().Format(time.RFC3339), e.Active, "schema-wide")
				}
				for _, e := range entries {
					opts := describeOptions(e.Options)
					if e.DroppedAt != nil {
						opts = "table dropped " + e.DroppedAt.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", e.Table, e.Kind, e.Source, e.CreatedAt.UTC().Format(time.RFC3339), e.Active, opts)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include tables that were unwatched")
	return cmd
}

func describeOptions(o watches.Options) string {
	var parts []string
	if o.RowFilter != "" {
		parts = append(parts, "where "+o.RowFilter)
	}
	if len(o.Columns) > 0 {
		parts = append(parts, "columns "+strings.Join(o.Columns, ","))
	}
	if len(o.ExcludeColumns) > 0 {
		parts = append(parts, "excluding "+strings.Join(o.ExcludeColumns, ","))
	}
	if len(o.OnColumns) > 0 {
		parts = append(parts, "on "+strings.Join(o.OnColumns, ","))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}
