"""The README's command blocks, as the walk (tests/engine/test_readme_walk.py) runs them.

The convention for README writers (also in CONTRIBUTING.md):
- a ```sh block is commands a user runs as written, in order, from the checkout: the walk runs
  every one of them, in document order, and fails when one fails or asks for input;
- a ```text block is an illustration: output, a command that needs a real Pi or a choice of
  yours, a file's content. The walk skips it. Data blocks (```yaml, ```json, ```js,
  ```mermaid, ...) are skipped too;
- every fence names its language: a bare ``` is refused, so nothing is left unclassified.
In a ```sh block, pulumi runs only as `bin/pulumi` (it picks the stack's passphrase), and every
command is one the walk provides (`PROVIDED`): a new tool is added there, or the block is text.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

COMMANDS = "sh"
"""The fence language of commands the walk runs."""
ILLUSTRATION = "text"
"""The fence language of what the walk skips."""
DATA = frozenset(
    {"yaml", "yml", "json", "js", "javascript", "mermaid", "toml", "ini", "dockerfile"}
)
"""Fence languages of file contents and diagrams, skipped."""

PROVIDED = frozenset(
    {
        # the project's entry points
        "bin/pulumi", "bin/up-local", "bin/picluster", "bin/restore-db", "bin/restore-datastore",
        # what the prerequisites list and the walk's machine has
        "docker", "kubectl", "ssh", "ssh-keyscan", "ssh-keygen", "curl", "python3", "git",
        # the shell's own
        "cat", "chmod", "cp", "mv", "rm", "mkdir", "echo", "printf", "export", "cd", "ls", "grep",
        "test", "true", "sed", "head", "tail", "tee", "umask", "unset", "[",
    }
)  # fmt: skip
"""The commands a ```sh block may start (first word of each pipeline part)."""


class ReadmeBlockError(ValueError):
    """A README block the walk cannot classify, naming its line."""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    language: str
    line: int
    """The line of the opening fence (1-based): the block's first line is `line + 1`."""
    text: str
    heading: str
    """The nearest heading above it."""

    @property
    def name(self) -> str:
        first = next((line for line in self.text.splitlines() if line.strip()), "")
        return f"README.md:{self.line} ({self.heading}): {first.strip()}"


_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def blocks(markdown: str) -> list[Block]:
    """Every fenced block of `markdown`, in order. A fence without a language is refused."""
    found: list[Block] = []
    heading = "top"
    lines = markdown.splitlines()
    at = 0
    while at < len(lines):
        line = lines[at]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        opening = _FENCE.match(line)
        if not opening:
            at += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language = opening["info"].strip().split(" ", 1)[0].lower()
        if not language:
            raise ReadmeBlockError(
                f"README.md:{at + 1} ({heading}): a fence without a language; use ```sh for "
                "commands the README walk runs, ```text for an illustration"
            )
        body: list[str] = []
        at += 1
        while at < len(lines):
            closing = _FENCE.match(lines[at])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            text = lines[at]
            body.append(text[indent:] if text[:indent].strip() == "" else text)
            at += 1
        else:
            raise ReadmeBlockError(f"README.md:{opening.start() + 1}: a fence that never closes")
        found.append(Block(language, at - len(body), "\n".join(body) + "\n", heading))
        at += 1
    return found


def command_blocks(markdown: str) -> list[Block]:
    """The ```sh blocks, checked: any other language must be text or data."""
    runnable = []
    for block in blocks(markdown):
        if block.language == COMMANDS:
            commands(block)
            runnable.append(block)
        elif block.language != ILLUSTRATION and block.language not in DATA:
            raise ReadmeBlockError(
                f"{block.name}: ```{block.language} is neither ```sh (run by the README walk) "
                "nor ```text (skipped)"
            )
    return runnable


def commands(block: Block) -> list[str]:
    """The first word of every pipeline part of `block` (after `VAR=value` assignments), each
    one the walk provides; `pulumi` itself is refused (use bin/pulumi)."""
    text = re.sub(r"\\\n", " ", block.text)
    words: list[str] = []
    for number, line in enumerate(text.splitlines()):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as error:
            raise ReadmeBlockError(f"{block.name}: line {number + 1}: {error}") from None
        expect_command = True
        for token in tokens:
            if token in ("|", "||", "&&", ";", "&", "(", "$("):
                expect_command = True
                continue
            if not expect_command:
                continue
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                continue  # KUBECONFIG=... kubectl
            expect_command = False
            words.append(token)
            if token == "pulumi":
                raise ReadmeBlockError(
                    f"{block.name}: runs `pulumi` itself; README commands use `bin/pulumi`, which "
                    "sets the stack's passphrase file"
                )
            if token not in PROVIDED:
                raise ReadmeBlockError(
                    f"{block.name}: `{token}` is not a command the README walk provides "
                    "(tests/readme_walk.py PROVIDED): add it there, or fence the block ```text"
                )
    return words


def needs_prod_lab(block: Block) -> bool:
    """Whether the block works on the prod stack (or its cluster): the walk then starts the
    prod lab before it."""
    return bool(re.search(r"\bprod\b|\bkubectl\b|KUBECONFIG", block.text))
