package testutil

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// SwitchProxy is a TCP proxy on 127.0.0.1 to a target address that can be
// switched off: while off, it accepts and drops every connection (and drops
// those open), as a server that is away would. Tests use it to start a
// component before its dependency answers, or to take the dependency away.
type SwitchProxy struct {
	ln     net.Listener
	target string
	on     atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// NewSwitchProxy listens on a free loopback port, switched off, until the
// test ends.
func NewSwitchProxy(t testing.TB, target string) *SwitchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &SwitchProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() { _ = ln.Close(); p.Off() })
	return p
}

// Addr is the proxy's host:port.
func (p *SwitchProxy) Addr() string { return p.ln.Addr().String() }

// On forwards new connections to the target.
func (p *SwitchProxy) On() { p.on.Store(true) }

// Off drops new connections and closes the open ones.
func (p *SwitchProxy) Off() {
	p.on.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

func (p *SwitchProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.on.Load() {
			_ = c.Close()
			continue
		}
		go p.forward(c)
	}
}

func (p *SwitchProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.track(c, up)
	defer p.untrack(c, up)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

func (p *SwitchProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
}

func (p *SwitchProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
		delete(p.conns, c)
	}
}
