"""The shard arithmetic: every id in exactly one shard, the same one in every process and
run, shards of about equal size, and `I/N` read with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from core.sources.folders import folder_image_id
from core.sources.shards import EVERYTHING, Shard, shard_of
from core.sources.url_lists import url_image_id
from index_builder import main
from tests.conftest import ROOT

IDS = (
    [str(n) for n in range(0, 600_000, 97)]  # COCO image ids
    + [folder_image_id("/photos", f"2024/img_{n}.jpg") for n in range(3000)]
    + [url_image_id(f"https://example.com/{n}.jpg") for n in range(3000)]
)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_id_is_in_exactly_one_shard(count: int) -> None:
    shards = [Shard(index, count) for index in range(count)]
    for id_ in IDS:
        assert [shard.holds(id_) for shard in shards].count(True) == 1, id_
        assert shards[shard_of(id_, count)].holds(id_)


def test_shards_are_about_equal_in_size() -> None:
    sizes = Counter(shard_of(id_, 4) for id_ in IDS)
    assert set(sizes) == {0, 1, 2, 3}
    for size in sizes.values():
        assert abs(size - len(IDS) / 4) < 0.05 * len(IDS)  # 25% ± 5 points each
    coco = Counter(shard_of(str(n), 2) for n in range(100_000, 100_400, 7))  # mini COCO ids
    assert min(coco.values()) > 20


PINNED = {"9": 1, "42": 2, "391895": 0, "f0123456789abcdef": 0, "u00112233445566ff": 1}
"""Shards of 4 computed once: a change of the hash would move every stored entry to
another shard, so the next refresh of each shard would re-embed what is stored."""


def test_shards_are_stable_across_runs_and_processes() -> None:
    assert {id_: shard_of(id_, 4) for id_ in PINNED} == PINNED
    code = (
        "import json, sys; from core.sources.shards import shard_of; "
        "print(json.dumps([shard_of(i, 5) for i in json.loads(sys.stdin.read())]))"
    )
    sample = IDS[::25]  # of every kind of id
    mine = [shard_of(id_, 5) for id_ in sample]
    for seed in ("1", "2"):  # Python's own hash() would differ between these two
        other = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(sample),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        assert json.loads(other.stdout) == mine


def test_parse_reads_i_of_n() -> None:
    assert Shard.parse("0/4") == Shard(0, 4)
    assert Shard.parse(" 3 / 4 ") == Shard(3, 4)
    assert str(Shard.parse("2/7")) == "2/7"
    assert Shard.parse("0/1") == EVERYTHING and EVERYTHING.whole
    assert all(EVERYTHING.holds(id_) for id_ in IDS[:100])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4/4", "shards count from 0, so I/N needs 0 <= I < N (here 0 to 3)"),
        ("-1/4", "shards count from 0"),
        ("0/0", "the number of shards must be at least 1"),
        ("1", "expected I/N, e.g. 0/4"),
        ("a/b", "expected I/N"),
        ("1/2/3", "expected I/N"),
    ],
)
def test_parse_refuses_what_is_no_shard(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Shard.parse(text)
    assert message in str(refused.value)


def test_the_cli_refuses_a_bad_shard_and_a_sharded_rebuild(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--shard", "4/4"], ["--shard=-1/2"], ["--shard", "half"]):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2
        assert "error: argument --shard: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["--shard", "1/2", "--rebuild"])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "--rebuild drops the whole collection, every shard's entries" in err
    assert "another COLLECTION" in err
