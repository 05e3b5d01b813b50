package agent

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/decode"
)

// builtinResolver maps built-in types and renders everything else as text.
type builtinResolver struct{}

func (builtinResolver) Resolve(_ context.Context, oid uint32) (*decode.Type, error) {
	if t, ok := decode.BuiltinType(oid); ok {
		return t, nil
	}
	return &decode.Type{OID: oid, Name: "unknown", Kind: decode.KindText}, nil
}

func (builtinResolver) Forget() {}

func newResolver(_ *pgx.Conn) typeResolver { return builtinResolver{} }
