package main

// How both commands (remote over SSH, local) collect a run's output, as pulumi-command's
// commandOutputs does: stdout and stderr each on their own (the outputs), both interleaved (the
// error message), and the logged streams line by line to the engine as status messages.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
)

type capture struct {
	stdout, stderr, both bytes.Buffer
	// Stdout and Stderr are what the process writes to.
	Stdout, Stderr io.Writer
	pipe           *io.PipeWriter
	done           chan struct{}
}

// newCapture starts forwarding the streams `logging` names to the engine.
func newCapture(logging *string, lg *logger) *capture {
	c := &capture{done: make(chan struct{})}
	r, w := io.Pipe()
	c.pipe = w
	both := &lockedWriter{w: &c.both}
	logged := &lockedWriter{w: w}
	stdoutWriters := []io.Writer{&c.stdout, both}
	if shouldLogStdout(logging) {
		stdoutWriters = append(stdoutWriters, logged)
	}
	stderrWriters := []io.Writer{&c.stderr, both}
	if shouldLogStderr(logging) {
		stderrWriters = append(stderrWriters, logged)
	}
	c.Stdout = io.MultiWriter(stdoutWriters...)
	c.Stderr = io.MultiWriter(stderrWriters...)
	go func() {
		defer close(c.done)
		scanner := bufio.NewScanner(r)
		scanner.Buffer(make([]byte, 64*1024), 16*1024*1024)
		for scanner.Scan() {
			lg.status(diag.Info, scanner.Text())
		}
		_, _ = io.Copy(io.Discard, r) // never leave the writers blocked
	}()
	return c
}

// finish waits for the forwarding to end, then sets a's outputs, or returns the run's error with
// the interleaved output.
func (c *capture) finish(a *commandArgs, cmd string, err error) error {
	c.pipe.Close()
	<-c.done
	if err != nil {
		return fmt.Errorf("%w: running %q:\n%s", err, cmd, c.both.String())
	}
	a.Stdout = strings.TrimSuffix(c.stdout.String(), "\n")
	a.Stderr = strings.TrimSuffix(c.stderr.String(), "\n")
	return nil
}

func shouldLogStdout(l *string) bool {
	return l == nil || *l == logStdout || *l == logStdoutAndStderr
}

func shouldLogStderr(l *string) bool {
	return l == nil || *l == logStderr || *l == logStdoutAndStderr
}
