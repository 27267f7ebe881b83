package faulttest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/objwatch/callback/internal/testnet"
)

// Proxy forwards TCP connections from its own address to an upstream one (Postgres),
// and can fail in the two ways a network does:
//   - Refuse: every connection is reset and new ones are refused (the listener is
//     closed), like a server that died or a port that is firewalled with REJECT;
//   - Blackhole: connections stay open but nothing flows in either direction, and
//     new connections are accepted but not forwarded, like a partition or a DROP
//     rule. Data already read is held, not lost, and flows again after Restore.
//
// Restore undoes either. The address stays the same throughout.
//
// Delay makes a server that answers, but slowly: every chunk sent to the upstream is
// held for the delay before it is forwarded, so that every round trip (a statement, a
// COMMIT, each step of a new connection's handshake) takes that much longer. It is
// latency, not a bandwidth limit: chunks are not held behind each other's delay.
type Proxy struct {
	upstream string
	addr     string

	accepted atomic.Int64
	delay    atomic.Int64 // nanoseconds each chunk to the upstream is held

	mu     sync.Mutex
	ln     net.Listener // nil while refusing
	gate   chan struct{}
	open   bool // gate is closed (forwarding) when open
	conns  map[net.Conn]struct{}
	closed bool
}

// NewProxy listens on a free loopback port and forwards to upstream. The port comes
// from testnet, as Refuse gives it up for a while and Restore takes it back.
func NewProxy(upstream string) (*Proxy, error) {
	addr, err := testnet.Next()
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	p := &Proxy{upstream: upstream, addr: ln.Addr().String(), ln: ln,
		gate: make(chan struct{}), open: true, conns: map[net.Conn]struct{}{}}
	close(p.gate)
	go p.acceptLoop(ln)
	return p, nil
}

// Addr is host:port of the proxy.
func (p *Proxy) Addr() string { return p.addr }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Refuse resets every connection and refuses new ones until Restore.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	p.closeConnsLocked()
}

// Blackhole stops all traffic, on open connections and on new ones, until Restore.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open {
		p.gate = make(chan struct{})
		p.open = false
	}
}

// Restore forwards again: it listens again on the same address if refusing, and lets
// blackholed traffic through.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("proxy closed")
	}
	if !p.open {
		close(p.gate)
		p.open = true
	}
	if p.ln != nil {
		return nil
	}
	// The port was ours a moment ago; SO_REUSEADDR (set by Go) lets us take it back
	// at once unless someone else grabbed it, which is improbable: it lies below the
	// kernel's ephemeral range and testnet hands it out once.
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.ln = ln
			go p.acceptLoop(ln)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("proxy relisten on %s: %w", p.addr, err)
}

// Delay holds every chunk sent to the upstream for d from now on (0: no delay). Chunks
// already held keep their delay, and order is kept.
func (p *Proxy) Delay(d time.Duration) { p.delay.Store(int64(d)) }

// Close stops the proxy for good.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	if !p.open {
		close(p.gate) // wake the blocked pumps so they see their closed connections
		p.open = true
	}
	p.closeConnsLocked()
}

func (p *Proxy) closeConnsLocked() {
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as when the server goes away
		}
		c.Close()
	}
	clear(p.conns)
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

// trackAccepted tracks a connection that ln accepted, unless ln has been closed since
// (Refuse, or Refuse and Restore): a connection accepted a moment before Refuse, whose
// goroutine had not tracked it yet when Refuse reset the others, must not slip through
// and be forwarded. Seen under load: a pool kept committing through one such
// connection while the test believed Postgres cut off.
func (p *Proxy) trackAccepted(ln net.Listener, c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.ln != ln {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// wait blocks while the proxy is blackholed; false if the connection died meanwhile.
func (p *Proxy) wait(dead <-chan struct{}) bool {
	for {
		p.mu.Lock()
		gate, open := p.gate, p.open
		p.mu.Unlock()
		if open {
			return true
		}
		select {
		case <-gate:
		case <-dead:
			return false
		}
	}
}

func (p *Proxy) acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		go p.serve(ln, c)
	}
}

// acceptedHook, when set (by a test of the proxy), runs between Accept and tracking.
var acceptedHook func()

func (p *Proxy) serve(ln net.Listener, client net.Conn) {
	if acceptedHook != nil {
		acceptedHook()
	}
	if !p.trackAccepted(ln, client) {
		client.Close()
		return
	}
	defer p.untrack(client)
	defer client.Close()

	dead := make(chan struct{})
	var once sync.Once
	kill := func() { once.Do(func() { close(dead) }) }
	defer kill()
	// A connection accepted while blackholed waits here, like a SYN that gets no
	// answer; after Restore it is forwarded (its client has usually given up by then,
	// and the pumps end at once).
	if !p.wait(dead) {
		return
	}
	upstream, err := net.DialTimeout("tcp", p.upstream, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(upstream) {
		upstream.Close()
		return
	}
	defer p.untrack(upstream)
	defer upstream.Close()

	var wg sync.WaitGroup
	wg.Go(func() { p.pump(upstream, client, dead, kill, true) })
	wg.Go(func() { p.pump(client, upstream, dead, kill, false) })
	wg.Wait()
}

// chunk is data read from one side, due to be written to the other at due.
type chunk struct {
	data []byte
	due  time.Time
}

// pump copies src to dst, holding each chunk while blackholed and, when delayed is
// set, for the proxy's delay.
func (p *Proxy) pump(dst, src net.Conn, dead <-chan struct{}, kill func(), delayed bool) {
	if !delayed {
		p.copy(dst, src, dead, kill)
		return
	}
	// A writer that waits for each chunk's due time, so that a chunk read while an
	// earlier one waits is not delayed twice.
	chunks := make(chan chunk, 1024)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		defer kill()
		for c := range chunks {
			if wait := time.Until(c.due); wait > 0 {
				select {
				case <-time.After(wait):
				case <-dead:
					return
				}
			}
			if !p.wait(dead) {
				return
			}
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
	})
	defer close(chunks)
	defer func() {
		kill()
		dst.Close()
		src.Close()
	}()
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case chunks <- chunk{data: buf[:n], due: time.Now().Add(time.Duration(p.delay.Load()))}:
			case <-dead:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// copy copies src to dst, holding each chunk while blackholed.
func (p *Proxy) copy(dst, src net.Conn, dead <-chan struct{}, kill func()) {
	defer func() {
		kill()
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(dead) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a reset: either way this connection is over
		}
	}
}
