package backfill

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// readAsGuest makes conn safe for reading a table another role owns, and
// returns what undoes it. Backfill and checkpoint read the watched table as
// the agent's role, which owns the publication and the pgaudit_cdc schema:
//
//   - A row-level security policy would run its expression with that
//     role's rights and could hide rows from the READ events and the
//     checkpoint's digest. With row_security off, PostgreSQL refuses a query
//     that a policy would affect instead (explainRowSecurity), and runs no
//     policy.
//
// Key values are cast to their domain's base type (column.castTyp), so that
// no domain CHECK, which may call any function, runs either. The search
// path stays the role's: an extension's key type (citext, say) finds its
// comparison operators there, and a path without them would compare such
// keys as text, in another order than the key's own, and skip rows.
func readAsGuest(ctx context.Context, conn *pgx.Conn) (undo func(), err error) {
	if _, err := conn.Exec(ctx, "SET row_security = off"); err != nil {
		return nil, fmt.Errorf("setting up the session to read the table: %w", err)
	}
	return func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "RESET row_security")
	}, nil
}

// explainRowSecurity turns PostgreSQL's refusal of a query a row-level
// security policy would affect into what to do about it.
func explainRowSecurity(err error, table string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" && strings.HasPrefix(pgErr.Message, "query would be affected by row-level security policy") {
		return fmt.Errorf("%s has row-level security policies that apply to this role, which could hide rows from the audit trail: run it as a role with BYPASSRLS (ALTER ROLE … BYPASSRLS), or as the table's owner if the policies are not forced: %w", table, err)
	}
	return err
}

// baseType is format_type of oid's base type when oid is a domain (of a
// domain, ...), and typ otherwise.
func baseType(ctx context.Context, conn *pgx.Conn, oid uint32, typ string) (string, error) {
	err := conn.QueryRow(ctx, `WITH RECURSIVE d(oid, base, typmod, depth) AS (
			SELECT t.oid, t.typbasetype, t.typtypmod, 0 FROM pg_catalog.pg_type t WHERE t.oid = $1 AND t.typtype = 'd'
			UNION ALL
			SELECT t.oid, t.typbasetype, CASE WHEN d.typmod <> -1 THEN d.typmod ELSE t.typtypmod END, d.depth + 1
			FROM d JOIN pg_catalog.pg_type t ON t.oid = d.base WHERE t.typtype = 'd' AND d.depth < 64)
		SELECT coalesce((SELECT pg_catalog.format_type(base, typmod) FROM d ORDER BY depth DESC LIMIT 1), $2)`, oid, typ).Scan(&typ)
	if err != nil {
		return "", fmt.Errorf("reading the base type of type %d: %w", oid, err)
	}
	return typ, nil
}
