package main

// command:local:Command: what pulumi-command v1.2.1's provider/pkg/provider/local
// (command.go, commandOutputs.go run) does, re-written here for picluster's image builds. The
// inputs are the remote Command's without `connection`, plus `dir` and `interpreter`; Diff,
// Create, Update (update, else create), Delete (delete, if any) and Read are the remote one's.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// checkLocalInputs applies the local Command's schema: the common inputs' types, `dir` a string,
// `interpreter` a list of strings. There is no connection and no default to add.
func checkLocalInputs(news resource.PropertyMap) (resource.PropertyMap, []checkFailure) {
	withConnection := news.Copy()
	withConnection["connection"] = resource.NewProperty(resource.PropertyMap{"host": resource.NewProperty("local")})
	out, failures := checkCommandInputs(withConnection)
	delete(out, "connection")
	if v, ok := out["dir"]; ok {
		if p, known := reveal(v); known && !p.IsNull() && !p.IsString() {
			failures = append(failures, checkFailure{"dir", fmt.Sprintf("expected a string, got %s", p.TypeString())})
		}
	}
	if v, ok := out["interpreter"]; ok {
		if p, known := reveal(v); known && !p.IsNull() && !p.IsArray() {
			failures = append(failures, checkFailure{"interpreter", fmt.Sprintf("expected an array, got %s", p.TypeString())})
		}
	}
	return out, failures
}

// decodeLocal reads a local Command's inputs or state (all values known) into plain values.
func decodeLocal(m resource.PropertyMap) (commandArgs, error) {
	withConnection := m.Copy()
	withConnection["connection"] = resource.NewProperty(resource.PropertyMap{"host": resource.NewProperty("local")})
	a, err := decodeCommand(withConnection)
	if err != nil {
		return a, err
	}
	a.Local = true
	a.Connection = connection{}
	if a.Dir, err = optString(m, "dir"); err != nil {
		return a, err
	}
	if v, ok := m["interpreter"]; ok {
		if p, known := reveal(v); known && p.IsArray() {
			for _, e := range p.ArrayValue() {
				if pe, known := reveal(e); known && pe.IsString() {
					a.Interpreter = append(a.Interpreter, pe.StringValue())
				}
			}
		}
	}
	return a, nil
}

// runLocal executes cmd on this machine as v1.2.1's local run: `interpreter` (default
// /bin/sh -c) with cmd as its last argument, in `dir` when given, the provider's environment plus
// `environment` (and PULUMI_COMMAND_STDOUT/STDERR with addPreviousOutputInEnv, the default),
// stdin piped in when non-empty, output streamed and captured as the remote run does.
func (a *commandArgs) runLocal(ctx context.Context, lg *logger, op, cmd string) error {
	argv := a.Interpreter
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c"}
	}
	argv = append(append([]string{}, argv...), cmd)
	lg.debug(fmt.Sprintf("pulumi-command test double: %s: running %q locally", op, cmd))
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if a.Dir != nil {
		c.Dir = *a.Dir
	}
	c.Env = os.Environ()
	for _, k := range sortedKeys(a.Environment) {
		c.Env = append(c.Env, k+"="+a.Environment[k])
	}
	if a.AddPreviousOutputInEnv == nil || *a.AddPreviousOutputInEnv {
		c.Env = append(c.Env, envStdout+"="+a.Stdout, envStderr+"="+a.Stderr)
	}
	if a.Stdin != nil && len(*a.Stdin) > 0 {
		c.Stdin = strings.NewReader(*a.Stdin)
	}

	out := newCapture(a.Logging, lg)
	c.Stdout = out.Stdout
	c.Stderr = out.Stderr
	err := c.Run()
	return out.finish(a, cmd, err)
}
