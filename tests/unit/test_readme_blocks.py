"""The README walk's extractor (tests/readme_walk.py): which blocks run, in which order, from which
line, and what it refuses. The walk itself is tests/engine/test_readme_walk.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_walk import (
    ReadmeBlockError,
    blocks,
    command_blocks,
    commands,
    needs_prod_lab,
)

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """# Title

## Quick start

```sh
bin/up-local
```

Output looks like:

```text
frontendUrl  http://127.0.0.1:8080/
```

1. In a list:

   ```sh
   bin/pulumi stack init prod
   ssh-keyscan -t ed25519 192.168.1.10 | \\
     bin/pulumi config set --path 'nodes[0].hostKey'
   ```

```yaml
config:
  picluster:target: docker
```

````text
```sh
not a block of its own
```
````
"""


def test_blocks_come_in_document_order_with_their_line_and_heading() -> None:
    found = blocks(SAMPLE)
    assert [(b.language, b.line, b.heading) for b in found] == [
        ("sh", 5, "Quick start"),
        ("text", 11, "Quick start"),
        ("sh", 17, "Quick start"),
        ("yaml", 23, "Quick start"),
        ("text", 28, "Quick start"),
    ]
    assert found[0].text == "bin/up-local\n"
    # A block in a list item loses the item's indentation; a longer fence holds a shorter one.
    assert found[2].text.startswith("bin/pulumi stack init prod\nssh-keyscan")
    assert found[4].text == "```sh\nnot a block of its own\n```\n"
    assert found[2].name == "README.md:17 (Quick start): bin/pulumi stack init prod"


def test_only_sh_blocks_run_and_their_commands_are_known() -> None:
    runnable = command_blocks(SAMPLE)
    assert [b.line for b in runnable] == [5, 17]
    assert commands(runnable[1]) == ["bin/pulumi", "ssh-keyscan", "bin/pulumi"]
    assert needs_prod_lab(runnable[1]) and not needs_prod_lab(runnable[0])


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("# A\n```\nls\n```\n", "README.md:2 (A): a fence without a language"),
        ("# A\n```console\n$ ls\n```\n", "```console is neither ```sh"),
        ("# A\n```sh\npulumi destroy -s local --yes\n```\n", "runs `pulumi` itself"),
        ("# A\n```sh\nX=1 pulumi up\n```\n", "runs `pulumi` itself"),
        ("# A\n```sh\nbin/pulumi up --yes && pulumi stack output\n```\n", "runs `pulumi`"),
        ("# A\n```sh\nnmcli connection up x\n```\n", "`nmcli` is not a command the README walk"),
        ("# A\n```sh\nbin/up-local\n", "a fence that never closes"),
    ],
)
def test_what_the_walk_cannot_classify_fails_naming_the_block(markdown: str, message: str) -> None:
    with pytest.raises(ReadmeBlockError, match=message.replace("(", r"\(").replace(")", r"\)")):
        command_blocks(markdown)


def test_the_readme_follows_the_convention() -> None:
    """Every fence of README.md names its language and every ```sh block only runs commands
    the walk provides, through bin/pulumi."""
    assert command_blocks((ROOT / "README.md").read_text())
