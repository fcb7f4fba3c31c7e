"""CLI usability: the default key location, option names, help text, reading a command at a
terminal, the `report` summary, and parse errors that name the offending character.

Every test here runs with HOME in tmp_path and without $OFFSWITCH_KEY (autouse fixture): the
real home directory is never read or written.
"""

from __future__ import annotations

import argparse
import io
import re
import stat
import sys
from pathlib import Path

import pytest

from offswitch import commands as C
from offswitch.cli import build_parser, main
from offswitch.errors import MalformedCommandError
from offswitch.keys import KEY_ENV, OwnerKey, PublicKey, default_key_path

from ._cli import ENV, MID, listing
from .conftest import PASSPHRASE, ROOT, assert_clean_error
from .test_report_robustness import make_results

USING_KEY = re.compile(r"^offswitch: using key (\S+) \(key id ([0-9a-f]{16})\)$", re.M)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """An empty home directory of our own; no $OFFSWITCH_KEY."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv(KEY_ENV, raising=False)
    return h


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --- 1. the default key location -------------------------------------------------------------


def test_default_key_path(home, monkeypatch) -> None:
    assert default_key_path() == home / ".offswitch" / "owner"
    monkeypatch.setenv(KEY_ENV, "~/keys/acme")
    assert default_key_path() == home / "keys" / "acme"
    monkeypatch.setenv(KEY_ENV, "")  # empty = unset
    assert default_key_path() == home / ".offswitch" / "owner"


def test_keygen_without_out_creates_the_default_directory(cli, home) -> None:
    res = cli("keygen", "--no-passphrase")
    assert res.rc == 0, res.err
    d = home / ".offswitch"
    assert _mode(d) == 0o700 and listing(d) == ["owner", "owner.pub"]
    assert _mode(d / "owner") == 0o600
    assert f"created directory {d} (mode 0700)" in res.err
    assert res.out == f"key id: {PublicKey.load(d / 'owner.pub').key_id}\n"
    # the second time the directory exists, and the key is not replaced
    before = (d / "owner").read_bytes()
    assert_clean_error(cli("keygen", "--no-passphrase"), "already exists", "--force")
    assert (d / "owner").read_bytes() == before


def test_keygen_default_directory_mode_ignores_the_umask(cli, home) -> None:
    import os

    old = os.umask(0o277)  # mkdir(mode=0o700) alone would give 0500
    try:
        assert cli("keygen", "--no-passphrase").rc == 0
    finally:
        os.umask(old)
    assert _mode(home / ".offswitch") == 0o700


def test_keygen_default_leaves_no_directory_when_no_passphrase_is_available(cli, home) -> None:
    res = cli("keygen")  # no passphrase source, no terminal
    assert_clean_error(res, "passphrase", "--passphrase-file")
    assert listing(home) == []  # not even an empty ~/.offswitch


def test_keygen_default_removes_its_directory_when_writing_fails(cli, home, monkeypatch) -> None:
    def fail(*a, **kw):
        raise OSError(28, "No space left on device", str(home / ".offswitch" / "owner"))

    monkeypatch.setattr(OwnerKey, "save", fail)
    assert_clean_error(cli("keygen", "--no-passphrase"), "no space left")
    assert listing(home) == []


def test_keygen_default_with_an_existing_directory_keeps_its_mode(cli, home) -> None:
    (home / ".offswitch").mkdir(mode=0o755)
    (home / ".offswitch").chmod(0o755)
    res = cli("keygen", "--no-passphrase")
    assert res.rc == 0 and "created directory" not in res.err
    assert _mode(home / ".offswitch") == 0o755  # not ours to change, as ssh-keygen


def test_keygen_offswitch_key_env(cli, home, monkeypatch) -> None:
    (home / "keys").mkdir()
    monkeypatch.setenv(KEY_ENV, "~/keys/acme")
    res = cli("keygen", "--no-passphrase")
    assert res.rc == 0, res.err
    assert listing(home / "keys") == ["acme", "acme.pub"]
    assert listing(home) == ["keys"]  # no ~/.offswitch


def test_keygen_explicit_paths_need_an_existing_directory(cli, home, monkeypatch) -> None:
    """Only the built-in default's directory is created; and the directory is checked before
    any passphrase is needed (here there is no passphrase source: the error is the directory)."""
    res = cli("keygen", "-o", home / "missing" / "owner")
    assert_clean_error(res, "does not exist", str(home / "missing"), "mkdir -m 700")
    assert "passphrase" not in res.err
    monkeypatch.setenv(KEY_ENV, str(home / "elsewhere" / "owner"))
    res = cli("keygen")
    assert_clean_error(res, "does not exist", str(home / "elsewhere"), "$OFFSWITCH_KEY")
    assert "passphrase" not in res.err
    assert listing(home) == []


def test_keygen_default_checks_home_before_the_passphrase(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    res = cli("keygen")
    assert_clean_error(res, "does not exist", str(tmp_path / "no-such-home"))
    assert "passphrase" not in res.err


@pytest.mark.parametrize("flag", ["-o", "--out", "--output"])
def test_keygen_out_aliases(cli, tmp_path, flag) -> None:
    res = cli("keygen", flag, tmp_path / "k", "--no-passphrase")
    assert res.rc == 0, res.err
    assert (tmp_path / "k.pub").is_file()


def test_default_key_through_slots_command_and_manifest(cli, home, tmp_path) -> None:
    assert cli("keygen", env=ENV).rc == 0
    key_path = home / ".offswitch" / "owner"
    key = OwnerKey.load(key_path, PASSPHRASE)
    res = cli("slots", "plant", "--model-id", MID, "0", "1")
    assert res.rc == 0, res.err
    assert USING_KEY.search(res.err).groups() == (str(key_path), key.key_id)
    assert (home / ".offswitch" / "owner.slots.json").is_file()

    res = cli("command", "--model-id", MID, "--slot", "1", env=ENV)
    assert res.rc == 0, res.err
    assert res.out == C.make_command(key, MID, 1) + "\n"  # stdout: the command, nothing else
    assert USING_KEY.search(res.err).group(2) == key.key_id

    res = cli("key-id")
    assert (res.rc, res.out) == (0, key.key_id + "\n")
    assert USING_KEY.search(res.err)

    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"\x00" * 64)
    res = cli("manifest", "sign", model, env=ENV)
    assert res.rc == 0 and res.out == "" and f"signed by key id {key.key_id}" in res.err, res.err
    res = cli("manifest", "verify", model, "--pubkey", f"{key_path}.pub")
    assert res.rc == 0, res.err


def test_explicit_key_says_nothing_extra(cli, plain_key_files) -> None:
    _, path, _ = plain_key_files
    res = cli("key-id", path)
    assert res.err == ""
    res = cli("slots", "list", "--key", path)
    assert res.rc == 0 and res.err == ""


def test_default_key_failure_is_one_sentence(cli, home) -> None:
    """The 'using key' note comes only on success: a failure stays one line."""
    assert cli("keygen", "--no-passphrase").rc == 0
    res = cli("command", "--model-id", MID, "--slot", "0")  # not planted
    assert_clean_error(res, "not recorded as planted", str(home / ".offswitch"))
    assert res.out == ""


def test_missing_default_key(cli, home, monkeypatch) -> None:
    res = cli("command", "--model-id", MID, "--slot", "0")
    assert_clean_error(res, "no --key given", str(home / ".offswitch" / "owner"), "keygen")
    assert_clean_error(cli("slots", "list"), "no --key given")
    assert_clean_error(cli("key-id"), "no --key given")
    monkeypatch.setenv(KEY_ENV, str(home / "nope"))
    assert_clean_error(cli("slots", "next", "--model-id", MID), "$OFFSWITCH_KEY", "nope")
    assert listing(home) == []


def test_an_empty_home_gives_no_default_key_under_root(cli, tmp_path) -> None:
    env = {"HOME": "", "OFFSWITCH_KEY": ""}
    for argv in (("keygen", "--no-passphrase"), ("key-id",), ("slots", "list")):
        res = cli(*argv, env=env)
        assert_clean_error(res, "$HOME is empty", "OFFSWITCH_KEY")
        assert "/.offswitch" not in res.err.replace("~/.offswitch", "")


def test_default_key_that_is_not_a_key(cli, home) -> None:
    (home / ".offswitch").mkdir()
    (home / ".offswitch" / "owner").write_text("hello\n")
    assert_clean_error(cli("command", "--model-id", MID, "--slot", "0"), "owner")


# --- 2 and 3. option names and help ----------------------------------------------------------


def _parsers(p: argparse.ArgumentParser, name: str = "offswitch"):
    yield name, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_bare_offswitch_prints_the_overview(cli) -> None:
    res = cli()
    assert res.rc == 0 and res.err == ""
    assert res.out.startswith("usage: offswitch") and "keygen" in res.out and "demo" in res.out


def test_help_pages_ship_with_the_package_and_every_help_names_one(cli) -> None:
    """--help texts point at `offswitch help TOPIC` (the docs ship inside the package), never at
    a repository path a wheel does not have; every topic they name exists."""
    from offswitch.cli import build_parser

    listing = cli("help")
    assert listing.rc == 0 and "implant" in listing.out and "cli" in listing.out
    page = cli("help", "implant")
    assert page.rc == 0 and page.out == (ROOT / "docs" / "implant.md").read_text("utf-8")
    assert cli("help", "ROBUSTNESS").out.startswith("# Robustness")
    assert_clean_error(cli("help", "nope"), "no help topic 'nope'", "implant")
    parser = build_parser()
    texts = [parser.format_help()] + [
        sp.format_help()
        for action in parser._subparsers._group_actions
        for sp in action.choices.values()
    ]
    named = {t for text in texts for t in re.findall(r"offswitch help ([a-z-]+)'", text)}
    assert named and named <= set(re.findall(r"^  ([a-z-]+) ", listing.out, re.M)), named
    assert not any(re.search(r"\bdocs/|\battacks/README", text) for text in texts)


def test_every_help_has_examples_and_exit_status() -> None:
    seen = []
    for name, p in _parsers(build_parser()):
        text = p.format_help()
        seen.append(name)
        assert "examples:\n  offswitch " in text, name
        assert "exit status: 0 ok, 1 check failed or bad input, 2 usage error" in text, name
        assert "DESIGN" not in text, name
        assert "Traceback" not in text
    assert "offswitch slots spend" in seen and "offswitch manifest verify" in seen
    assert len(seen) == 20 and "offswitch help" in seen


def _help(cli, *argv: str) -> str:
    res = cli(*argv, "--help")
    assert res.rc == 0, res.err
    return " ".join(res.out.split())  # unwrap


def test_help_names_counts_indexes_and_ranges(cli) -> None:
    assert "how many slots to plant: a count, 1-64" in _help(cli, "implant")
    assert "slot number: an index, 0-65535" in _help(cli, "command")
    assert "0-65535" in _help(cli, "slots", "plant")
    text = _help(cli, "verify-command")
    assert "--model-id ID the model id" in text and "--pubkey PATH.pub the owner's public" in text
    assert "PATH private key file or PATH.pub" in _help(cli, "key-id")
    assert "-o PATH, --out PATH, --output PATH" in _help(cli, "keygen")
    assert "$OFFSWITCH_KEY, else ~/.offswitch/owner" in _help(cli, "command")


def test_attack_help_states_the_default_suite_and_its_cost(cli) -> None:
    text = _help(cli, "attack")
    assert "The default suite is 'standard'" in text
    assert "≈ 100 min" in text and "2 CPU cores" in text and "'offswitch help robustness'" in text
    assert "--suite quick" in text


def test_no_design_citations_in_docs() -> None:
    """DESIGN.md is not in the repository: docs cite the in-repo doc instead."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = [p.name for p in docs if "DESIGN" in p.read_text("utf-8")]
    assert bad == []


# --- 4. verify-command reading a command at a terminal ---------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_on_terminal(monkeypatch, capsys, argv: list[str], typed: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Terminal(typed))
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_command_on_a_terminal_says_it_waits(monkeypatch, capsys, plain_key_files) -> None:
    key, _, pub = plain_key_files
    cmd = C.make_command(key, MID, 2)
    argv = ["verify-command", "--pubkey", pub, "--model-id", MID]
    # one line is read: what follows the Enter is not waited for
    rc, out, err = _run_on_terminal(monkeypatch, capsys, argv, cmd + "\nnot read\n")
    assert rc == 0 and "slot 2" in out
    assert err.count("\n") == 1 and "reading the command from standard input" in err
    rc, out, err = _run_on_terminal(monkeypatch, capsys, [*argv, "-"], cmd + "\n")
    assert rc == 0 and "reading the command" in err


def test_verify_command_on_a_terminal_end_of_input(monkeypatch, capsys, plain_key_files) -> None:
    _, _, pub = plain_key_files
    argv = ["verify-command", "--pubkey", pub, "--model-id", MID]
    rc, out, err = _run_on_terminal(monkeypatch, capsys, argv, "")
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == "offswitch: error: no command was entered (end of input)"


def test_verify_command_from_a_pipe_says_nothing_extra(cli, plain_key_files) -> None:
    key, _, pub = plain_key_files
    res = cli(
        "verify-command", "--pubkey", pub, "--model-id", MID, stdin=C.make_command(key, MID, 0)
    )
    assert res.rc == 0 and res.err == ""


# --- 5. report prints a summary --------------------------------------------------------------


def test_report_prints_a_short_summary(cli, tmp_path) -> None:
    results = make_results(tmp_path / "results")
    res = cli("report", results)
    assert res.rc == 0, res.err
    assert len(res.out) < 1500 and "## " not in res.out
    lines = res.out.splitlines()
    assert lines[0].startswith("suite standard: 5 attacks")
    assert "  finetune-lora: signed removed at steps = 1000; plain removed at steps = 300" in lines
    assert "  quantize: signed survived; plain survived" in lines
    assert "  noise: signed inconclusive; plain survived" in lines
    assert "  finetune-full: signed failed; plain removed at steps = 1000" in lines
    assert lines[-1] == f"full report: {results / 'report.md'} (or add --markdown to print it here)"
    assert "wrote" in res.err and str(results / "report.html") in res.err
    for name in ("report.json", "report.md", "report.html"):
        assert (results / name).stat().st_size > 0


@pytest.mark.parametrize("flag", ["--markdown", "--print"])
def test_report_markdown_flag_prints_everything(cli, tmp_path, flag) -> None:
    results = make_results(tmp_path / "results")
    res = cli("report", results, "--out", tmp_path / "out", flag)
    assert res.rc == 0, res.err
    assert res.out == (tmp_path / "out" / "report.md").read_text("utf-8") + "\n"


# --- 6. parse errors that name the character -------------------------------------------------


@pytest.fixture
def good(owner_key) -> str:
    return C.make_command(owner_key, MID, 3)


def _error(text: str) -> str:
    with pytest.raises(MalformedCommandError) as exc:
        C.parse_command(text)
    return str(exc.value)


def _words(cmd: str) -> tuple[str, list[str]]:
    head, words = cmd.split(": ", 1)
    return head + ": ", words.split(" ")


def test_homoglyph_in_a_word_is_named(good) -> None:
    head, words = _words(good)
    i = next(i for i, w in enumerate(words) if "a" in w)
    words[i] = words[i].replace("a", "\u0430", 1)  # CYRILLIC SMALL LETTER A
    msg = _error(head + " ".join(words))
    assert f"word {i + 1} (" in msg and "U+0430 CYRILLIC SMALL LETTER A" in msg
    assert "lowercase a-z" in msg


def test_no_break_space_is_named_not_counted(good) -> None:
    head, words = _words(good)
    msg = _error(head + " ".join(words[:4]) + "\u00a0" + " ".join(words[4:]))
    assert "46 words" not in msg
    assert "word 4 is followed by U+00A0 NO-BREAK SPACE" in msg
    assert "single spaces" in msg


def test_invisible_joiner_is_named_with_the_count(good) -> None:
    head, words = _words(good)
    msg = _error(head + " ".join(words[:9]) + "\u200b" + " ".join(words[9:]))
    assert "46 words" in msg and "word 9 contains U+200B ZERO WIDTH SPACE" in msg


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (
            lambda c: "\u043e" + c[1:],
            ["start with", "character 1 is U+043E CYRILLIC SMALL LETTER O"],
        ),
        (lambda c: c.replace("v1 ", "v1\u00a0", 1), ["character 13 is U+00A0 NO-BREAK SPACE"]),
        (lambda c: c.replace("key=", "key=\u0430", 1), ["key=", "character 18 is U+0430"]),
        (lambda c: c.replace(" ", "\t", 1), ["start with", "U+0009 CHARACTER TABULATION"]),
        (lambda c: c + "\u00a0", ["whitespace", "U+00A0 NO-BREAK SPACE"]),
        (lambda c: "offswitch v1", ["expected 'offswitch v1 key="]),  # not "unsupported v1"
    ],
)
def test_header_problems_name_the_character(good, mutate, needles) -> None:
    msg = _error(mutate(good))
    for n in needles:
        assert n in msg, (n, msg)


def test_cli_shows_the_code_point_in_one_line(cli, plain_key_files) -> None:
    key, _, pub = plain_key_files
    head, words = _words(C.make_command(key, MID, 0))
    words[0] = "\u0430" + words[0][1:]
    res = cli("verify-command", "--pubkey", pub, "--model-id", MID, head + " ".join(words))
    assert_clean_error(res, "not genuine", "word 1", "U+0430 CYRILLIC SMALL LETTER A")
