package main

// Tests of the double's own logic (no engine): Check defaults and secrets, Diff kinds, and the
// SSH run against an in-process SSH server (stdin, environment, trimming, the error text, host-key
// pinning, dial retries, sign-in with a key's passphrase and with an agent).

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func TestCheckAppliesDefaultsAndSecrets(t *testing.T) {
	news := resource.PropertyMap{
		"create": resource.NewProperty("hostname"),
		"connection": resource.NewProperty(resource.PropertyMap{
			"host":       resource.NewProperty("10.0.0.1"),
			"privateKey": resource.NewProperty("KEY"),
		}),
	}
	out, failures := checkCommandInputs(news)
	if len(failures) != 0 {
		t.Fatalf("failures: %v", failures)
	}
	conn := out["connection"]
	if !conn.IsSecret() {
		t.Fatalf("connection not secret: %v", conn)
	}
	c := conn.SecretValue().Element.ObjectValue()
	if c["user"].StringValue() != "root" || c["port"].NumberValue() != 22 ||
		c["dialErrorLimit"].NumberValue() != 10 || c["perDialTimeout"].NumberValue() != 15 {
		t.Fatalf("defaults not applied: %v", c)
	}
	if !c["privateKey"].IsSecret() {
		t.Fatalf("privateKey not secret")
	}
	if _, ok := out["logging"]; ok {
		t.Fatalf("logging has no schema default, must stay unset")
	}
	_, failures = checkCommandInputs(resource.PropertyMap{"create": resource.NewProperty("x")})
	if len(failures) != 1 || failures[0].property != "connection" {
		t.Fatalf("missing connection: %v", failures)
	}
	_, failures = checkCommandInputs(resource.PropertyMap{"connection": resource.NewProperty(resource.PropertyMap{
		"host": resource.NewProperty("h"), "proxy": resource.NewProperty(resource.PropertyMap{})})})
	if len(failures) != 1 || failures[0].property != "connection.proxy" {
		t.Fatalf("proxy: %v", failures)
	}
}

func diffOf(t *testing.T, olds, news resource.PropertyMap) *pulumirpc.DiffResponse {
	t.Helper()
	o, _ := checkCommandInputs(olds)
	n, _ := checkCommandInputs(news)
	os, err := marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&server{}).Diff(context.Background(), &pulumirpc.DiffRequest{
		Urn: "urn:pulumi:dev::p::command:remote:Command::c", Olds: os, OldInputs: os, News: ns,
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func base(extra map[string]resource.PropertyValue) resource.PropertyMap {
	m := resource.PropertyMap{
		"create": resource.NewProperty("cat > /tmp/x"),
		"stdin":  resource.NewProperty("one"),
		"connection": resource.NewProperty(resource.PropertyMap{
			"host": resource.NewProperty("h"), "privateKey": resource.NewProperty("K")}),
	}
	for k, v := range extra {
		m[resource.PropertyKey(k)] = v
	}
	return m
}

func TestDiff(t *testing.T) {
	trig := func(vs ...string) resource.PropertyValue {
		arr := []resource.PropertyValue{}
		for _, v := range vs {
			arr = append(arr, resource.NewProperty(v))
		}
		return resource.NewProperty(arr)
	}
	cases := []struct {
		name       string
		olds, news resource.PropertyMap
		changes    pulumirpc.DiffResponse_DiffChanges
		detailed   map[string]pulumirpc.PropertyDiff_Kind
		replaces   []string
	}{
		{"same", base(nil), base(nil), pulumirpc.DiffResponse_DIFF_NONE, map[string]pulumirpc.PropertyDiff_Kind{}, nil},
		{"stdin", base(nil), base(map[string]resource.PropertyValue{"stdin": resource.NewProperty("two")}),
			pulumirpc.DiffResponse_DIFF_SOME, map[string]pulumirpc.PropertyDiff_Kind{"stdin": pulumirpc.PropertyDiff_UPDATE}, nil},
		{"connection", base(nil), base(map[string]resource.PropertyValue{"connection": resource.NewProperty(
			resource.PropertyMap{"host": resource.NewProperty("h2"), "privateKey": resource.NewProperty("K")})}),
			pulumirpc.DiffResponse_DIFF_SOME, map[string]pulumirpc.PropertyDiff_Kind{"connection": pulumirpc.PropertyDiff_UPDATE}, nil},
		{"triggers added", base(nil), base(map[string]resource.PropertyValue{"triggers": trig("a")}),
			pulumirpc.DiffResponse_DIFF_SOME, map[string]pulumirpc.PropertyDiff_Kind{"triggers": pulumirpc.PropertyDiff_ADD_REPLACE},
			[]string{"triggers"}},
		// As upstream: an element change is an update from the provider; the SDK's
		// replaceOnChanges ["triggers[*]"] makes the engine replace.
		{"trigger element", base(map[string]resource.PropertyValue{"triggers": trig("a")}),
			base(map[string]resource.PropertyValue{"triggers": trig("b")}),
			pulumirpc.DiffResponse_DIFF_SOME, map[string]pulumirpc.PropertyDiff_Kind{"triggers[0]": pulumirpc.PropertyDiff_UPDATE}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := diffOf(t, c.olds, c.news)
			if resp.Changes != c.changes {
				t.Fatalf("changes %v", resp.Changes)
			}
			if len(resp.DetailedDiff) != len(c.detailed) {
				t.Fatalf("detailed %v", resp.DetailedDiff)
			}
			for k, kind := range c.detailed {
				if d := resp.DetailedDiff[k]; d == nil || d.Kind != kind {
					t.Fatalf("detailed[%s] = %v, want %v (all: %v)", k, d, kind, resp.DetailedDiff)
				}
			}
			if fmt.Sprint(resp.Replaces) != fmt.Sprint(c.replaces) {
				t.Fatalf("replaces %v", resp.Replaces)
			}
		})
	}
}

// --- an in-process SSH server ----------------------------------------------------------------------

type testServer struct {
	addr    string
	hostKey ssh.PublicKey
	dials   atomic.Int32
}

// startServer accepts key auth for any user and runs "commands": "cat" echoes stdin; "env NAME"
// prints that variable; "fail" writes to stdout and stderr and exits 3. Only LC_* and
// PULUMI_COMMAND_* variables are accepted (AcceptEnv).
func startServer(t *testing.T) *testServer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) {
		return nil, nil
	}}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ts := &testServer{addr: ln.Addr().String(), hostKey: signer.PublicKey()}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			ts.dials.Add(1)
			go serveConn(nc, cfg)
		}
	}()
	return ts
}

func serveConn(nc net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		ch, reqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			env := map[string]string{}
			for req := range reqs {
				switch req.Type {
				case "env":
					var kv struct{ Name, Value string }
					_ = ssh.Unmarshal(req.Payload, &kv)
					ok := strings.HasPrefix(kv.Name, "LC_") || strings.HasPrefix(kv.Name, "PULUMI_COMMAND_")
					if ok {
						env[kv.Name] = kv.Value
					}
					_ = req.Reply(ok, nil)
				case "exec":
					var p struct{ Cmd string }
					_ = ssh.Unmarshal(req.Payload, &p)
					_ = req.Reply(true, nil)
					code := 0
					switch {
					case p.Cmd == "cat":
						data, _ := io.ReadAll(ch)
						_, _ = ch.Write(append(data, '\n', '\n'))
					case strings.HasPrefix(p.Cmd, "env "):
						fmt.Fprintf(ch, "%s\n", env[strings.TrimPrefix(p.Cmd, "env ")])
					case p.Cmd == "fail":
						fmt.Fprint(ch, "to stdout\n")
						fmt.Fprint(ch.Stderr(), "to stderr\n")
						code = 3
					}
					status := make([]byte, 4)
					binary.BigEndian.PutUint32(status, uint32(code))
					_, _ = ch.SendRequest("exit-status", false, status)
					ch.Close()
					return
				default:
					_ = req.Reply(false, nil)
				}
			}
		}()
	}
}

func testArgs(t *testing.T, ts *testServer, hostKey *string) *commandArgs {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ts.addr)
	var p float64
	fmt.Sscan(port, &p)
	key := string(pemEncode(block.Type, block.Bytes))
	user := "pi"
	none := logNone
	return &commandArgs{Logging: &none, Connection: connection{
		Host: &host, Port: p, User: &user, PrivateKey: &key, HostKey: hostKey,
		DialErrorLimit: 10, PerDialTimeout: 5,
	}}
}

func TestRun(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	ts := startServer(t)
	ctx := context.Background()
	lg := &logger{ctx: ctx}

	a := testArgs(t, ts, nil)
	in := "hello"
	a.Stdin = &in
	if err := a.run(ctx, lg, "create", "cat"); err != nil {
		t.Fatal(err)
	}
	if a.Stdout != "hello\n" { // stdin + "\n\n", one trailing newline trimmed
		t.Fatalf("stdout %q", a.Stdout)
	}

	a = testArgs(t, ts, nil)
	a.Environment = map[string]string{"LC_X": "from-env"}
	if err := a.run(ctx, lg, "create", "env LC_X"); err != nil || a.Stdout != "from-env" {
		t.Fatalf("env: %v %q", err, a.Stdout)
	}
	a.Stdout = "previous"
	if err := a.run(ctx, lg, "update", "env PULUMI_COMMAND_STDOUT"); err != nil || a.Stdout != "previous" {
		t.Fatalf("previous output: %v %q", err, a.Stdout)
	}
	a.Environment = map[string]string{"REFUSED": "x"}
	if err := a.run(ctx, lg, "create", "cat"); err == nil ||
		err.Error() != `could not set environment variable "REFUSED": ssh: setenv failed` {
		t.Fatalf("refused env: %v", err)
	}

	a = testArgs(t, ts, nil)
	err := a.run(ctx, lg, "create", "fail")
	want := "Process exited with status 3: running \"fail\":\n"
	if err == nil || !strings.HasPrefix(err.Error(), want) ||
		!strings.Contains(err.Error(), "to stdout\n") || !strings.Contains(err.Error(), "to stderr\n") {
		t.Fatalf("failure text: %q", err)
	}

	good := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ts.hostKey)))
	a = testArgs(t, ts, &good)
	if err := a.run(ctx, lg, "create", "env LC_NONE"); err != nil {
		t.Fatalf("pinned host key: %v", err)
	}

	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(otherPriv)
	wrong := string(ssh.MarshalAuthorizedKey(otherSigner.PublicKey()))
	a = testArgs(t, ts, &wrong)
	a.Connection.DialErrorLimit = 2
	before := ts.dials.Load()
	err = a.run(ctx, lg, "create", "cat")
	if err == nil || err.Error() != "after 2 failed attempts: ssh: handshake failed: ssh: host key mismatch" {
		t.Fatalf("wrong host key: %v", err)
	}
	if n := ts.dials.Load() - before; n != 3 { // upstream: limit N allows N+1 dials
		t.Fatalf("dials: %d", n)
	}
}

// TestSignIn: a key with its passphrase, and the agent, as v1.2.1's connectionBase.SSHConfig
// (provider/pkg/provider/remote/connection.go): an encrypted key without privateKeyPassword, or a
// privateKeyPassword for a key without one, fails the connection before any dial; with no key, the
// agent at agentSocketPath (else $SSH_AUTH_SOCK, connection_unix.go) signs in, and an agent
// socket that does not answer fails the connection.
func TestSignIn(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	ts := startServer(t)
	ctx := context.Background()
	lg := &logger{ctx: ctx}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret-words"))
	if err != nil {
		t.Fatal(err)
	}
	encrypted := string(pemEncode(block.Type, block.Bytes))

	a := testArgs(t, ts, nil)
	a.Connection.PrivateKey = &encrypted
	if err := a.run(ctx, lg, "create", "env LC_NONE"); err == nil ||
		!strings.Contains(err.Error(), "passphrase protected") {
		t.Fatalf("encrypted key without passphrase: %v", err)
	}
	passphrase := "secret-words"
	a.Connection.PrivateKeyPassword = &passphrase
	if err := a.run(ctx, lg, "create", "env LC_NONE"); err != nil {
		t.Fatalf("encrypted key with passphrase: %v", err)
	}
	plain := testArgs(t, ts, nil)
	plain.Connection.PrivateKeyPassword = &passphrase
	if err := plain.run(ctx, lg, "create", "env LC_NONE"); err == nil {
		t.Fatal("a passphrase for a key without one was accepted")
	}

	keyring := agent.NewKeyring()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	viaAgent := testArgs(t, ts, nil)
	viaAgent.Connection.PrivateKey = nil
	viaAgent.Connection.DialErrorLimit = 0
	t.Setenv("SSH_AUTH_SOCK", socket)
	if err := viaAgent.run(ctx, lg, "create", "env LC_NONE"); err == nil {
		t.Fatal("an empty agent signed in")
	}
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	if err := viaAgent.run(ctx, lg, "create", "env LC_NONE"); err != nil {
		t.Fatalf("agent from SSH_AUTH_SOCK: %v", err)
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	viaAgent.Connection.AgentSocketPath = &socket
	if err := viaAgent.run(ctx, lg, "create", "env LC_NONE"); err != nil {
		t.Fatalf("agent from agentSocketPath: %v", err)
	}
	gone := filepath.Join(t.TempDir(), "gone.sock")
	t.Setenv("SSH_AUTH_SOCK", gone)
	if err := testArgs(t, ts, nil).run(ctx, lg, "create", "env LC_NONE"); err == nil {
		t.Fatal("a dead SSH_AUTH_SOCK did not fail the connection")
	}
}

func pemEncode(typ string, b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
}

func TestLocalRun(t *testing.T) {
	ctx := context.Background()
	lg := &logger{ctx: ctx}
	state := resource.PropertyMap{
		"create":      resource.NewProperty("bash -s"),
		"stdin":       resource.MakeSecret(resource.NewProperty("echo \"$GREETING from $(pwd)\"; echo err >&2")),
		"environment": resource.NewProperty(resource.PropertyMap{"GREETING": resource.NewProperty("hello")}),
		"dir":         resource.NewProperty(t.TempDir()),
	}
	checked, failures := checkLocalInputs(state)
	if len(failures) != 0 {
		t.Fatalf("check: %v", failures)
	}
	if _, has := checked["connection"]; has {
		t.Fatal("a local command has no connection")
	}
	if !checked["stdin"].IsSecret() {
		t.Fatal("stdin lost its secretness")
	}
	a, err := decodeLocal(checked)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.run(ctx, lg, "create", *a.Create); err != nil {
		t.Fatal(err)
	}
	if want := "hello from " + *a.Dir; a.Stdout != want || a.Stderr != "err" {
		t.Fatalf("stdout %q stderr %q, want %q", a.Stdout, a.Stderr, want)
	}
	// The previous stdout reaches the next run, as upstream's addPreviousOutputInEnv (default on).
	if err := a.run(ctx, lg, "update", `printf '%s' "$PULUMI_COMMAND_STDOUT!"`); err != nil || a.Stdout != "hello from "+*a.Dir+"!" {
		t.Fatalf("previous output: %v %q", err, a.Stdout)
	}
	err = a.run(ctx, lg, "create", "echo to stdout; exit 3")
	if err == nil || !strings.HasPrefix(err.Error(), "exit status 3: running ") || !strings.Contains(err.Error(), "to stdout\n") {
		t.Fatalf("failure text: %v", err)
	}
	if _, failures := checkLocalInputs(resource.PropertyMap{"dir": resource.NewProperty(3.0)}); len(failures) != 1 {
		t.Fatalf("a numeric dir: %v", failures)
	}
	if err := checkType("urn:pulumi:s::p::command:local:Command::x"); err != nil {
		t.Fatal(err)
	}
	if err := checkType("urn:pulumi:s::p::command:local:Run::x"); err == nil {
		t.Fatal("command:local:Run is not implemented")
	}
}
