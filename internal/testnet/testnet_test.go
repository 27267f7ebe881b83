package testnet

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 50 {
		addr := FreeAddr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := strconv.Atoi(port); n < portMin || n >= portMax {
			t.Errorf("%s is outside %d-%d, below the kernel's ephemeral range", addr, portMin, portMax)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s is not free: %v", addr, err)
		}
		ln.Close()
	}
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	if p := FreePort(t); p < portMin || p >= portMax {
		t.Errorf("FreePort() = %d, want a port in %d-%d", p, portMin, portMax)
	}
}
