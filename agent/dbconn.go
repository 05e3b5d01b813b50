package agent

import (
	"context"
	"net"

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
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return rawsock.Wrap(c), nil
	}
	return pgx.ConnectConfig(ctx, cfg)
}
