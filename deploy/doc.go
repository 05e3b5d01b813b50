// Package deploy holds pgaudit-cdc's deployment files (Dockerfile, compose
// stack, Kubernetes manifests, systemd unit, Prometheus alerts and a Grafana
// dashboard) and the tests that check them against the code: that every file
// parses, that every metric they query is one the service registers and that
// every environment variable they set is one the CLI reads.
package deploy
