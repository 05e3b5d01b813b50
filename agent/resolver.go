package agent

import (
	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/catalog"
)

func newResolver(conn *pgx.Conn) typeResolver { return catalog.NewResolver(conn) }
