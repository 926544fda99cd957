//go:build tools

// Package tools records the Prometheus command this module builds, so that
// `go mod tidy` keeps its requirements. It is never compiled.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
