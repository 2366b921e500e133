// RunPlugin: Python plugins and policy packs started by the engine through the language host.
//
// Written for picluster after reading upstream's host (pulumi/pulumi,
// sdk/python/cmd/pulumi-language-python/main.go, RunPlugin and parseOptions); the behaviour is
// the same except where noted:
//
//   - The plugin directory is the program directory the engine sends (PulumiPolicy.yaml's or
//     PulumiPlugin.yaml's folder); its `runtime.options` (toolchain, virtualenv) pick the Python.
//     Plugins other than policy packs default to `virtualenv: venv` under pip/auto, as upstream;
//     policy packs without a virtualenv use the Python found by PULUMI_PYTHON_CMD or on PATH.
//   - Picluster difference: when the configured virtualenv directory does not exist, the host does
//     not fail at exec time but falls back to the Python from PULUMI_PYTHON_CMD or PATH, and says
//     so on the plugin's stderr. (The engine never installs a local pack's dependencies before a
//     preview; the engine tests run with the project's .venv first on PATH.)
//   - A directory with `__main__.py` is run as a bare directory: a policy pack (kind "analyzer") as
//     `python -u -m pulumi.policy ARGS... DIR` with the pack directory as working directory, any
//     other plugin as `python DIR ARGS...` in the request's working directory. Without
//     `__main__.py`, a buildable package (pyproject.toml) whose environment has
//     `pulumi.run.plugin` runs as `python -m pulumi.run.plugin NAME ARGS...`.
//   - Policy packs go through the SDK's PolicyProxy (sdk/v3's `sdk` package), as upstream: the
//     engine talks to the proxy first, the proxy's ConfigureStack gives the stack's organization,
//     project, stack, dry-run flag and config, which reach pulumi-policy as PULUMI_ORGANIZATION,
//     PULUMI_PROJECT, PULUMI_STACK, PULUMI_DRY_RUN and PULUMI_CONFIG; the pack's own port is then
//     read from its stdout and every later analyzer call proxied to it.
//   - The request's Env is appended to the command's environment; stdout and stderr are streamed
//     back as RunPluginResponse messages; a non-zero exit is reported as the Exitcode message, a
//     clean exit by ending the stream.
//   - Not supported: AttachDebugger (refused with an error).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	sdk "github.com/pulumi/pulumi/sdk/v3"
	"github.com/pulumi/pulumi/sdk/v3/go/common/apitype"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
)

// pluginOptions reads the plugin's runtime options like a program's, then applies the plugin
// defaults and picluster's missing-virtualenv fallback. The note, if any, is for the plugin's stderr.
func pluginOptions(info *pulumirpc.ProgramInfo, isAnalyzer bool) (toolchain.PythonOptions, string, error) {
	opts, err := options(info)
	if err != nil {
		return opts, "", err
	}
	if !isAnalyzer && opts.Virtualenv == "" &&
		(opts.Toolchain == toolchain.Pip || opts.Toolchain == toolchain.Auto) {
		opts.Virtualenv = "venv"
	}
	if opts.Virtualenv == "" || opts.Toolchain == toolchain.Poetry {
		return opts, "", nil
	}
	dir := opts.Virtualenv
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(opts.Root, dir)
	}
	if _, err := os.Stat(dir); err == nil {
		return opts, "", nil
	}
	note := fmt.Sprintf("pulumi-language-python: virtualenv %s of plugin %s does not exist; "+
		"using the Python from PULUMI_PYTHON_CMD or PATH instead\n", dir, info.GetProgramDirectory())
	opts.Virtualenv = ""
	return opts, note, nil
}

func (h *host) RunPlugin(req *pulumirpc.RunPluginRequest, server pulumirpc.LanguageRuntime_RunPluginServer) error {
	ctx := server.Context()
	if req.GetAttachDebugger() {
		return errors.New("attaching a debugger to a plugin is not supported by picluster's minimal language host")
	}
	info := req.GetInfo()
	if info == nil {
		return errors.New("RunPlugin: missing program info")
	}
	isAnalyzer := req.GetKind() == string(apitype.AnalyzerPlugin)
	opts, note, err := pluginOptions(info, isAnalyzer)
	if err != nil {
		return err
	}
	tc, err := toolchain.ResolveToolchain(opts)
	if err != nil {
		return err
	}
	dir := info.GetProgramDirectory()

	// Which way to start it: a bare directory with __main__.py, or a package run by pulumi.run.plugin.
	_, statErr := os.Stat(filepath.Join(opts.Root, "__main__.py"))
	if statErr != nil && !os.IsNotExist(statErr) {
		return fmt.Errorf("looking for __main__.py: %w", statErr)
	}
	asPackage := false
	if os.IsNotExist(statErr) {
		probe, err := tc.Command(ctx, "-c", "import pulumi.run.plugin")
		if err != nil {
			return err
		}
		out, err := probe.CombinedOutput()
		asPackage = err == nil || !strings.Contains(string(out), "ModuleNotFoundError")
	}

	var cmd *exec.Cmd
	switch {
	case asPackage:
		buildable, err := toolchain.IsBuildablePackage(opts.Root)
		if err != nil {
			return fmt.Errorf("checking if plugin is a buildable package: %w", err)
		}
		if !buildable {
			return errors.New("plugin is not runnable, it provides neither __main__.py nor a buildable pyproject.toml")
		}
		pyproject, err := toolchain.LoadPyproject(opts.Root)
		if err != nil {
			return fmt.Errorf("loading pyproject: %w", err)
		}
		cmd, err = tc.ModuleCommand(ctx, "pulumi.run.plugin", append([]string{pyproject.Project.Name}, req.GetArgs()...)...)
		if err != nil {
			return err
		}
	case isAnalyzer:
		// Policy packs take their directory last (the old pulumi-analyzer-python-policy shim's order).
		args := append([]string{"-u", "-m", "pulumi.policy"}, req.GetArgs()...)
		cmd, err = tc.Command(ctx, append(args, dir)...)
		if err != nil {
			return err
		}
	default:
		cmd, err = tc.Command(ctx, append([]string{dir}, req.GetArgs()...)...)
		if err != nil {
			return err
		}
	}

	closer, stdout, stderr, err := rpcutil.MakeRunPluginStreams(server, false)
	if err != nil {
		return err
	}
	defer closer.Close()
	if note != "" {
		_, _ = io.WriteString(stderr, note)
	}

	// Policy packs have always run in their own directory; other plugins where the engine says.
	if isAnalyzer {
		cmd.Dir = dir
	} else {
		cmd.Dir = req.GetPwd()
	}

	var proxy *sdk.PolicyProxy
	if isAnalyzer {
		// The engine's first analyzer calls (Handshake, ConfigureStack) go to this proxy; the stack's
		// details it receives are what pulumi-policy reads from its environment at start-up.
		proxy, stdout, err = sdk.NewPolicyProxy(ctx, stdout)
		if err != nil {
			return fmt.Errorf("could not start policy pack proxy: %w", err)
		}
		stack, err := proxy.AwaitConfiguration(ctx)
		if err != nil {
			return fmt.Errorf("could not get stack configuration: %w", err)
		}
		if stack != nil {
			setenv := func(k, v string) {
				if v != "" {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
			setenv("PULUMI_ORGANIZATION", stack.GetOrganization())
			setenv("PULUMI_PROJECT", stack.GetProject())
			setenv("PULUMI_STACK", stack.GetStack())
			setenv("PULUMI_DRY_RUN", strconv.FormatBool(stack.GetDryRun()))
			if stack.GetConfig() != nil {
				b, err := json.Marshal(stack.GetConfig())
				if err != nil {
					return fmt.Errorf("could not marshal stack configuration: %w", err)
				}
				setenv("PULUMI_CONFIG", string(b))
			}
		}
	}

	cmd.Env = append(cmd.Env, req.GetEnv()...)
	cmd.Stdout, cmd.Stderr = stdout, stderr

	err = cmd.Start()
	if err == nil {
		if proxy != nil {
			// Reads the pack's port from its stdout, forwards the stack configuration, proxies
			// the analyzer calls and returns when the pack exits.
			if err = proxy.Attach(ctx, cmd); err != nil {
				err = fmt.Errorf("could not attach policy pack proxy: %w", err)
			}
		} else {
			err = cmd.Wait()
		}
	}
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok {
				return server.Send(&pulumirpc.RunPluginResponse{
					Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: int32(ws.ExitStatus())},
				})
			}
			return fmt.Errorf("program exited unexpectedly: %w", exitErr)
		}
		return fmt.Errorf("problem executing plugin program (could not run language executor): %w", err)
	}
	return closer.Close()
}
