// Package api holds the HTTP API's document, api/openapi.yaml (OpenAPI 3.1). The
// server's tests validate real requests and responses against it, so it cannot drift
// from the handlers in internal/server.
package api

import _ "embed"

// OpenAPI is api/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
