// Command pgaudit-cdc turns every committed change to watched PostgreSQL
// tables into an event on the audit-stream spine. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgaudit-cdc/pgaudit-cdc/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgaudit-cdc:", err)
		os.Exit(cli.ExitCode(err))
	}
}
