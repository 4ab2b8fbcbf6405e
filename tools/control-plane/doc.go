// Package controlplane holds no code: this module only pins the versions of
// kube-apiserver and kube-controller-manager (the tool directives in go.mod)
// that scripts/control-plane.sh builds for kmseal's tests.
package controlplane
