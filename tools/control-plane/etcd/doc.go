// Package etcd holds no code: this module only pins the version of etcd (the
// tool directive in go.mod) that scripts/control-plane.sh builds for kmseal's
// tests.
package etcd
