package agent

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/rawsock"
)

// connectDB opens a connection to the audited database for the agent's
// own steady work (progress, anchors), its socket read and written with
// raw system calls like the replication connection's (package rawsock).
func connectDB(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.DialFunc = rawsock.WrapDial(cfg.DialFunc)
	return pgx.ConnectConfig(ctx, cfg)
}
