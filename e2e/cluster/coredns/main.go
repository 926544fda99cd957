// Command coredns is upstream CoreDNS with only the plugins the test cluster
// uses. It mirrors github.com/coredns/coredns/coredns.go, but instead of the
// all-plugin bundle (core/plugin) it imports a few plugins and narrows
// dnsserver.Directives (the plugin execution order) to them.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/template"
)

// The plugins' order of execution, as in upstream's plugin.cfg (zdirectives.go): bind the
// listening address, report errors, answer from the cache, then the template (NXDOMAIN for
// names outside the cluster) and the cluster's own names.
var directives = []string{
	"bind",
	"errors",
	"cache",
	"template",
	"kubernetes",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		panic(err)
	}
	coremain.Run()
}
