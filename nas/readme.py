"""README's generated part: the command list, from the parser (`python -m nas.readme` rewrites it;
tests/test_config.py fails when README and the parser drift apart)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BEGIN = "<!-- BEGIN generated: nas commands (python -m nas.readme) -->"
END = "<!-- END generated: nas commands -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _subcommands(parser: argparse.ArgumentParser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]


def commands() -> str:
    """The command list as Markdown: one line per command and benchmark, its --help summary."""
    from nas.cli import build_parser

    lines = []
    for name, help_text, sub in _subcommands(build_parser()):
        lines.append(f"- `nas {name}` — {help_text}")
        if name == "bench":
            lines += [f"  - `nas bench {bench}` — {text}" for bench, text, _ in _subcommands(sub)]
    return "\n".join(lines)


def rewritten(text: str) -> str:
    """README's text with the generated part replaced."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    return pattern.sub(lambda _: f"{BEGIN}\n{commands()}\n{END}", text)


def main() -> int:
    from nas.io import write_text

    text = README.read_text()
    new = rewritten(text)
    if new != text:
        write_text(README, new)
        print(f"rewrote the command list in {README}")
    else:
        print(f"{README} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
