package faulttest

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestProxy_aConnectionAcceptedJustBeforeRefuseIsNotForwarded: a connection the
// listener accepted before Refuse, but that its goroutine tracks only after Refuse has
// reset the others, must be dropped like them. It was forwarded, and a fault test saw
// the service commit through it while Postgres was meant to be cut off.
func TestProxy_aConnectionAcceptedJustBeforeRefuseIsNotForwarded(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = upstream.Close() })
	go func() { // an echo server
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()

	accepted, release := make(chan struct{}), make(chan struct{})
	acceptedHook = func() { close(accepted); <-release }
	t.Cleanup(func() { acceptedHook = nil })

	p, err := NewProxy(upstream.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-accepted
	p.Refuse()
	close(release)

	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return // reset already: dropped
	}
	buf := make([]byte, 4)
	if n, err := io.ReadFull(c, buf); err == nil {
		t.Fatalf("read %q through a proxy that refuses: the connection was forwarded", buf[:n])
	}
}
