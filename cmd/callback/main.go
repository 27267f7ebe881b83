// Command callback is the service: it takes in callbacks on POST /callback, makes each
// durable before replying, and keeps the objects table up to date by looking every
// named object up in the object service. Configuration is read from the environment
// (and matching flags); see README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/objwatch/callback/internal/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := service.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "callback:", err)
		os.Exit(1)
	}
}
