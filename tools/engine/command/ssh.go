package main

// SSH side of the double: what remote/connection.go and remote/commandOutputs.go (run) of
// pulumi-command v1.2.1 do, re-written here.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/retry"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

const (
	envStdout = "PULUMI_COMMAND_STDOUT"
	envStderr = "PULUMI_COMMAND_STDERR"
)

var errProxyUnsupported = errors.New("connection.proxy (bastion host) is not supported by the " +
	"pulumi-command test double; the real pulumi-command provider could not be built here")

// sshConfig builds the client configuration as v1.2.1's connectionBase.SSHConfig does: a pinned
// host key (FixedHostKey, and only that key's algorithm offered) when hostKey is set, otherwise any
// host key is accepted; private key (optionally with passphrase), then password (also answering
// keyboard-interactive prompts), then the SSH agent (agentSocketPath, else $SSH_AUTH_SOCK).
func (c connection) sshConfig() (*ssh.ClientConfig, error) {
	var hostKeyCallback ssh.HostKeyCallback
	var hostKeyAlgorithms []string
	if c.HostKey != nil {
		publicKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(*c.HostKey))
		if err != nil {
			return nil, fmt.Errorf("failed to parse host key: %w", err)
		}
		hostKeyCallback = ssh.FixedHostKey(publicKey)
		hostKeyAlgorithms = []string{publicKey.Type()}
	} else {
		hostKeyCallback = ssh.InsecureIgnoreHostKey() //nolint:gosec // as upstream when no hostKey is given
	}
	config := &ssh.ClientConfig{
		User:              *c.User,
		HostKeyCallback:   hostKeyCallback,
		HostKeyAlgorithms: hostKeyAlgorithms,
		Timeout:           time.Second * time.Duration(c.PerDialTimeout),
	}
	if c.PrivateKey != nil {
		var signer ssh.Signer
		var err error
		if c.PrivateKeyPassword != nil {
			signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(*c.PrivateKey), []byte(*c.PrivateKeyPassword))
		} else {
			signer, err = ssh.ParsePrivateKey([]byte(*c.PrivateKey))
		}
		if err != nil {
			return nil, err
		}
		config.Auth = append(config.Auth, ssh.PublicKeys(signer))
	}
	if c.Password != nil {
		password := *c.Password
		config.Auth = append(config.Auth, ssh.Password(password),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
				answers := make([]string, len(questions))
				for i := range answers {
					answers[i] = password
				}
				return answers, nil
			}))
	}
	socket := ""
	if c.AgentSocketPath != nil {
		socket = *c.AgentSocketPath
	} else {
		socket = os.Getenv("SSH_AUTH_SOCK")
	}
	if socket != "" {
		conn, err := net.Dial("unix", socket)
		if err != nil {
			return nil, err
		}
		config.Auth = append(config.Auth, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
	}
	return config, nil
}

// dial connects with retries as v1.2.1's dialWithRetry: sdk retry.Until with its default backoff
// (100 ms, x1.5, at most 5 s), a status line "Dial N/LIMIT failed: retrying" after each failure,
// and giving up once the number of dials exceeds dialErrorLimit (-1 = never), with
// "after <tries> failed attempts: <last error>". (Upstream counts so that a limit of N allows N+1
// dials and reports N; kept as is.)
func (c connection) dial(ctx context.Context, lg *logger) (*ssh.Client, error) {
	if c.HasProxy {
		return nil, errProxyUnsupported
	}
	config, err := c.sshConfig()
	if err != nil {
		return nil, err
	}
	endpoint := net.JoinHostPort(*c.Host, fmt.Sprintf("%d", int(c.Port)))
	maxAttempts := c.DialErrorLimit
	var dialErr error
	ok, data, err := retry.Until(ctx, retry.Acceptor{
		Accept: func(try int, _ time.Duration) (bool, any, error) {
			client, err := ssh.Dial("tcp", endpoint, config)
			if err == nil {
				return true, client, nil
			}
			dialErr = err
			dials := try + 1
			if maxAttempts > -1 && dials > maxAttempts {
				return true, nil, fmt.Errorf("after %d failed attempts: %w", try, err)
			}
			limit := "inf"
			if maxAttempts != -1 {
				limit = fmt.Sprintf("%d", maxAttempts)
			}
			lg.status(diag.Info, fmt.Sprintf("%s %d/%s failed: retrying", "Dial", dials, limit))
			return false, nil, nil
		},
	})
	if ok && err == nil {
		return data.(*ssh.Client), nil
	}
	if err == nil {
		err = ctx.Err()
		if err == nil {
			err = dialErr
		}
	}
	return nil, err
}

// run executes cmd on the remote host as v1.2.1's CommandOutputs.run: environment via Setenv
// (a refused variable fails the run; a refused PULUMI_COMMAND_STDOUT/STDERR only warns), stdin
// piped in when non-empty, stdout/stderr captured separately and interleaved, each line streamed
// to the engine as an info status message according to `logging`, one trailing newline trimmed
// from each stream. On failure the error is `<err>: running "<cmd>":\n<stdout+stderr>` and the
// previous stdout/stderr are kept.
func (a *commandArgs) run(ctx context.Context, lg *logger, op, cmd string) error {
	if a.Local {
		return a.runLocal(ctx, lg, op, cmd)
	}
	lg.debug(fmt.Sprintf("pulumi-command test double: %s: running %q over SSH as %s@%s:%d",
		op, cmd, *a.Connection.User, deref(a.Connection.Host), int(a.Connection.Port)))
	client, err := a.Connection.dial(ctx, lg)
	if err != nil {
		return err
	}
	defer client.Close()

	session, err := client.NewSession()
	if err != nil {
		return err
	}
	defer session.Close()

	for _, k := range sortedKeys(a.Environment) {
		if err := session.Setenv(k, a.Environment[k]); err != nil {
			lg.log(diag.Error, setenvMessage(k))
			return fmt.Errorf("could not set environment variable %q: %w", k, err)
		}
	}
	if a.AddPreviousOutputInEnv == nil || *a.AddPreviousOutputInEnv {
		if a.Stdout != "" {
			if err := session.Setenv(envStdout, a.Stdout); err != nil {
				lg.log(diag.Warning, setenvMessage(envStdout))
			}
		}
		if a.Stderr != "" {
			if err := session.Setenv(envStderr, a.Stderr); err != nil {
				lg.log(diag.Warning, setenvMessage(envStderr))
			}
		}
	}
	if a.Stdin != nil && len(*a.Stdin) > 0 {
		session.Stdin = strings.NewReader(*a.Stdin)
	}

	out := newCapture(a.Logging, lg)
	session.Stdout = out.Stdout
	session.Stderr = out.Stderr
	err = session.Run(cmd)
	return out.finish(a, cmd, err)
}

func setenvMessage(key string) string {
	return fmt.Sprintf(`Unable to set '%s'. This only works if your SSH server is configured to accept
	these variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote host, you could
	prefix the command itself with the variables in the form 'VAR=value command'`, key)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
