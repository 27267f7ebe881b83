// Package deploy holds what operators run beside the service: the Prometheus rules and
// their unit tests (prometheus/), the Grafana dashboard and its provisioning
// (grafana/). Its tests check them against the service's real metrics, and the
// Dockerfile and compose.yaml at the repository root against each other.
package deploy
