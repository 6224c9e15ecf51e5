package server

import (
	"context"
	"net"

	"golang.org/x/sys/unix"
)

// notSentLowWater is the TCP_NOTSENT_LOWAT set on every connection: a
// blocked write wakes once the bytes queued but not yet sent fall below
// half of it. Without it Linux wakes a writer only when a third of the
// send buffer (up to 4 MiB) is free, so a client reading steadily but
// slowly showed no progress for longer than a body window and was cut off
// as stalled. It limits only what waits unsent, not what is in flight
// (the send buffer still grows for that). 64 KiB, one write of a blob
// copy, rather than 128: the client then reads bytes sent moments before,
// and a crane pull ran 10-14 % faster on 15-19 % less server CPU
// (docs/registryd.md, "Limits and timeouts").
const notSentLowWater = 64 << 10

// ConnContext is the http.Server ConnContext of the registry's listener:
// it tunes each accepted TCP connection (see notSentLowWater) and returns
// ctx unchanged. Best effort: a connection it cannot tune is served as is.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := unwrapTCP(c); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowWater)
			})
		}
	}
	return ctx
}

// unwrapTCP finds the TCP connection under c, through TLS.
func unwrapTCP(c net.Conn) (*net.TCPConn, bool) {
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = u.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	return tc, ok
}
