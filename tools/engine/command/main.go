// Command pulumi-resource-command (TEST DOUBLE) stands in for the pulumi-command 1.2.1 provider
// plugin, which cannot be built here: the Go module proxy refuses every version of
// github.com/pulumi/pulumi-command/provider and github.com/pulumi/pulumi-go-provider (403).
//
// It serves `command:remote:Command` and `command:local:Command` (plus the `pulumi:providers:command` provider with no
// settings), written for picluster against the public ResourceProvider gRPC protocol of
// github.com/pulumi/pulumi/sdk/v3 and golang.org/x/crypto/ssh. It mirrors what v1.2.1 does (its
// remote/command*.go, connection.go, logging.go and pulumi-go-provider v1.3.0's infer layer, read
// but not copied); README.md says where it differs.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

// version is the pulumi-command release this double mirrors, so the engine matches the plugin
// version the SDK asks for (GetPluginInfo adds "+test-double"). Set with -ldflags "-X main.version=...".
var version = "1.2.1"

const providerName = "command"

const banner = "pulumi-resource-command %s (TEST DOUBLE of pulumi-command v1.2.1 for picluster)"

func usage() string {
	return fmt.Sprintf(banner, version) + `

A test double, not the real provider: the Go module proxy here serves no version of
github.com/pulumi/pulumi-command/provider or github.com/pulumi/pulumi-go-provider, so the real
plugin cannot be built. This one implements command:remote:Command (create/update/delete over
SSH, stdin, environment, logging, triggers, addPreviousOutputInEnv, host-key pinning, dial retries)
and command:local:Command (the same, run on this machine, with dir and interpreter).
Not implemented: command:remote:CopyToRemote/CopyFile, connection.proxy.

Usage: started by the Pulumi engine as
  pulumi-resource-command [--tracing ENDPOINT] ENGINE_ADDRESS
  pulumi-resource-command --help | --version
`
}

func main() {
	if len(os.Args) == 2 {
		switch os.Args[1] {
		case "-h", "-help", "--help", "help":
			fmt.Print(usage())
			return
		case "-version", "--version", "version":
			fmt.Println(strings.TrimPrefix(version, "v") + " (test double)")
			return
		}
	}
	err := provider.Main(providerName, func(host *provider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		return newServer(host, strings.TrimPrefix(version, "v")), nil
	})
	if err != nil {
		cmdutil.ExitError(err.Error())
	}
}
