package store

import (
	"net/url"
	"strings"
	"testing"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
)

// brokenDriver panics the way dbmate's postgres driver does when the connection breaks
// in the middle of its first query (dbutil.MustClose).
type brokenDriver struct{ dbmate.Driver }

func (brokenDriver) DatabaseExists() (bool, error) {
	panic("write tcp 127.0.0.1:1->127.0.0.1:2: write: connection reset by peer")
}

func TestCreateAndMigrate_panicBecomesError(t *testing.T) {
	dbmate.RegisterDriver(func(dbmate.DriverConfig) dbmate.Driver { return brokenDriver{} }, "broken")
	err := createAndMigrate(dbmate.New(&url.URL{Scheme: "broken", Host: "x", Path: "/db"}))
	if err == nil || !strings.Contains(err.Error(), "connection reset by peer") {
		t.Fatalf("createAndMigrate = %v, want the panic as an error", err)
	}
}
