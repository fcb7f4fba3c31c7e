"""Append-only row logs (offswitch._atomic.append_row / read_rows): the attack runner's
results.jsonl and the research scripts' rows survive a writer killed mid-line."""

from __future__ import annotations

import json
import multiprocessing as mp

from offswitch._atomic import append_row, read_rows, repair_rows


def test_rows_round_trip_and_a_torn_tail_is_left_out_then_dropped(tmp_path) -> None:
    log = tmp_path / "deep" / "rows.jsonl"
    assert read_rows(log) == []
    append_row(log, {"b": 1, "a": [1, 2]})
    assert log.read_text() == '{"a": [1, 2], "b": 1}\n'  # one line, keys sorted
    with log.open("a") as fh:
        fh.write('{"a": 3, "b"')  # a writer killed mid-line
    assert read_rows(log) == [{"a": [1, 2], "b": 1}]
    append_row(log, {"a": 4})  # the torn line goes, the new one stands alone
    assert read_rows(log) == [{"a": [1, 2], "b": 1}, {"a": 4}]
    with log.open("a") as fh:
        fh.write("{")
    assert len(read_rows(log, repair=True)) == 2
    assert log.read_text().endswith('{"a": 4}\n')
    # repairing touches only the tail: a complete line is never parsed or rewritten there
    other = tmp_path / "samples.jsonl"
    other.write_bytes(b'{"ok": 1}\nnot json but complete\n' + b"x" * 100_000)
    repair_rows(other)
    assert other.read_bytes() == b'{"ok": 1}\nnot json but complete\n'
    whole = tmp_path / "one.jsonl"
    whole.write_bytes(b'{"torn": ')
    repair_rows(whole)
    assert whole.read_bytes() == b""


def _writer(path: str, who: int) -> None:
    for i in range(50):
        append_row(path, {"who": who, "i": i, "pad": "x" * 2000})


def test_processes_appending_to_one_log_never_interleave_lines(tmp_path) -> None:
    log = tmp_path / "rows.jsonl"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(log), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["who"], r["i"]) for r in rows) == [(w, i) for w in range(3) for i in range(50)]
