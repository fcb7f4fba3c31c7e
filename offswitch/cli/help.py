"""``offswitch help [TOPIC]``: a page of the documentation shipped inside the package."""

from __future__ import annotations

import argparse
from importlib import resources
from typing import Any

from ..errors import (
    UsageError,
)
from .common import (
    _sub,
)

#: the user documentation, shipped in the package (``offswitch/data/docs``, the repo's docs/)
DOCS = resources.files("offswitch").joinpath("data/docs")


def _help_topics() -> dict[str, Any]:
    """Topic name (a doc page's file name, lowercase, without ``.md``) → its file."""
    try:
        pages = [f for f in DOCS.iterdir() if f.name.endswith(".md")]
    except OSError:
        pages = []
    if not pages:
        raise UsageError(
            "the documentation shipped with offswitch is missing from this installation; "
            "reinstall offswitch"
        )
    return {f.name[: -len(".md")].lower(): f for f in sorted(pages, key=lambda f: f.name.lower())}


def cmd_help(args: argparse.Namespace) -> int:
    topics = _help_topics()
    if args.topic is None:
        print("offswitch help TOPIC prints one of these pages of the documentation:")
        for name, page in topics.items():
            title = page.read_text("utf-8").split("\n", 1)[0].lstrip("# ").strip()
            print(f"  {name:16} {title}")
        return 0
    page = topics.get(args.topic.lower())
    if page is None:
        raise UsageError(f"no help topic {args.topic!r}; the topics are: {', '.join(topics)}")
    print(page.read_text("utf-8"), end="")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this group's commands on ``sub``."""
    p = _sub(
        sub,
        "help",
        "print a page of the documentation (no topic: the list of pages)",
        "offswitch help                # the topics",
        "offswitch help implant        # the recipe and its figures",
        description="Print a page of the documentation that ships with offswitch: the CLI's "
        "conventions, the command format, the implant recipe and its figures, what the check "
        "measures, the attacks and what they found. Without a topic, the list.",
    )
    p.add_argument("topic", nargs="?", metavar="TOPIC", help="a page, e.g. implant or cli")
    p.set_defaults(func=cmd_help)
