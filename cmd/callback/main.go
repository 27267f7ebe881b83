// Command callback is the service: it takes in callbacks on POST /callback, makes each
// durable before replying, and keeps the objects table up to date by looking every
// named object up in the object service. Configuration is read from the environment
// (and matching flags); see README.md. `callback -version` prints the build.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/objwatch/callback/internal/metrics"
	"github.com/objwatch/callback/internal/service"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "-version" || os.Args[1] == "--version") {
		b := metrics.ReadBuild()
		fmt.Printf("callback %s (revision %s, %s)\n", b.Version, b.Revision, b.GoVersion)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := service.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage is printed, and asking for it is no failure
		}
		fmt.Fprintln(os.Stderr, "callback:", err)
		os.Exit(1)
	}
}
