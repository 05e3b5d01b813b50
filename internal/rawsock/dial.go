package rawsock

import (
	"context"
	"net"
)

// WrapDial returns dial with every connection it makes wrapped (Wrap): for
// a pgx DialFunc or an http.Transport's DialContext.
func WrapDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(c), nil
	}
}
