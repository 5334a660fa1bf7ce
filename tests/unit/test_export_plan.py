"""Archive names and work plans, by property: whatever a producer sends, names come out safe and
unique, and plans cover every source once, in order, within limits."""

from __future__ import annotations

import itertools
import unicodedata

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.exportplan import (
    _DEVICES,
    MAX_DEPTH,
    MAX_SEGMENT_BYTES,
    RESERVED,
    archive_name,
    compresses,
    default_name,
    fold,
    part_names,
    plan_runs,
    sanitise,
    unique_names,
)

# Text that looks like what hostile or careless producers send: separators, dots, controls,
# bidi overrides, Windows specials, combining marks, very long runs.
hostile_text = st.lists(
    st.one_of(
        st.sampled_from([*list('/\\.. :*?"<>|\x00\x1b\n\t\u202e\u200d\u200c~-_ aAcC\uff0e\uff0f\uff3c\u2025'),
                         "con", "NUL", "..", "/", "x" * 90]),
        st.characters(codec="utf-8"),
        st.characters(),  # includes lone surrogates
    ),
    max_size=120,
).map("".join)


JOINERS = "\u200c\u200d"  # zero-width non-joiner and joiner: kept inside a segment


def assert_safe(name: str) -> None:
    assert name and not name.startswith("/") and "\\" not in name
    segments = name.split("/")
    assert len(segments) <= MAX_DEPTH
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert segment == segment.strip(" ") and not segment.endswith(".")
        assert len(segment.encode()) <= MAX_SEGMENT_BYTES
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in segment if c not in JOINERS)
        assert segment[0] not in JOINERS and segment[-1] not in JOINERS
        best_fit = unicodedata.normalize("NFKC", segment)  # what Windows' ANSI file API may write
        assert best_fit.strip(". ") and "/" not in best_fit and "\\" not in best_fit
        assert not set(segment) & set('<>:"|?*')
        for form in (segment, best_fit):
            assert form.split(".")[0].rstrip(" ").casefold() not in ("con", "nul", "prn", "aux", "com1", "lpt1")
    name.encode("utf-8")  # strict: no surrogates left


@given(hostile_text)
def test_sanitised_names_are_safe_and_stable(name: str) -> None:
    clean = sanitise(name)
    assert_safe(clean)
    assert sanitise(clean) == clean


@settings(max_examples=200)
@given(st.lists(hostile_text, max_size=40))
def test_unique_names_never_collide_and_never_shadow_a_directory(names: list[str]) -> None:
    out = unique_names(names)
    assert len(out) == len(names)
    folded = [fold(n) for n in out]
    assert len(set(folded)) == len(folded), out
    assert not set(folded) & {fold(r) for r in RESERVED}
    directories = {fold("/".join(n.split("/")[:i])) for n in out for i in range(1, n.count("/") + 1)}
    assert not directories & set(folded), out  # a file is never also a directory
    for name in out:
        assert_safe(name)
        assert sanitise(name) == name


@given(st.lists(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}\.(jpg|txt)", fullmatch=True), unique=True, max_size=30))
def test_names_that_are_already_fine_are_kept(names: list[str]) -> None:
    folded = [fold(n) for n in names]
    dirs = {fold("/".join(n.split("/")[:i])) for n in names for i in range(1, n.count("/") + 1)}
    devices = any(segment.split(".")[0] in _DEVICES for n in names for segment in n.split("/"))
    if len(set(folded)) == len(folded) and not dirs & set(folded) and not devices:  # "aux.jpg" gets a "_"
        assert unique_names(names) == names


def test_hostile_examples() -> None:
    names = unique_names([
        "../../etc/passwd", "/abs", "a\\b", "x" * 300 + ".jpg", "a.jpg", "a.jpg", "A.JPG",
        "café/日本.txt", "con.txt", "\x00\x1b[31m.txt", "evil\u202egnp.exe", "README.txt", "a.jpg/inner", "..",
    ])
    assert names[:3] == ["etc/passwd", "abs", "a/b"]
    assert names[3].endswith(".jpg") and len(names[3].encode()) <= MAX_SEGMENT_BYTES
    assert names[4:7] == ["a.jpg", "a (1).jpg", "A (2).JPG"]
    assert names[7] == "café/日本.txt"
    assert names[8] == "_con.txt"
    assert names[9] == "[31m.txt"
    assert names[10] == "evilgnp.exe"
    assert names[11] == "README (1).txt"
    assert names[12] == "a.jpg (1)/inner"
    assert names[13] == "file"


def test_names_that_collide_on_windows_or_macos_are_numbered() -> None:
    """NTFS compares names uppercased (the dotless ı is I there), both file systems fold NFC and
    NFD forms of one name together; COM0 and LPT0 are device names too."""
    assert unique_names(["i.txt", "ı.txt", "café.txt", "cafe\u0301.txt", "COM0.txt", "lpt0"]) == [
        "i.txt", "ı (1).txt", "café.txt", "café (1).txt", "_COM0.txt", "_lpt0"]


def test_joiners_inside_words_and_emoji_are_kept() -> None:
    """ZWNJ and ZWJ are letters of Persian and Indic words and of emoji sequences: kept inside a
    name (it was changed), dropped where they join nothing; other format characters still go."""
    persian, coder = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt", "\U0001f469\u200d\U0001f4bb.png"
    assert unique_names([persian, coder, "\u200d\u200ccon.txt", "a.\u200d", "\u200b\u2066x\u00ad.txt"]) == [
        persian, coder, "_con.txt", "a", "x.txt"]


def test_fullwidth_separators_and_dots_cannot_climb_out_on_windows() -> None:
    """Through Windows' ANSI file API (best-fit), `／` `＼` become `/` `\\`, `．．` `‥` become `..` and
    `ＣＯＮ` the console."""
    assert unique_names(["\uff0e\uff0e\uff0f\uff0e\uff0e\uff3cevil.exe", "\u2025/\u2026/y.txt", "c\u2105o.txt",
                         "\u2026 draft.txt", "\uff21\uff22.txt", "\uff23\uff2f\uff2e\uff0etxt"]) == [
        "\uff0e\uff0e_\uff0e\uff0e_evil.exe", "y.txt", "c_o.txt", "\u2026 draft.txt", "\uff21\uff22.txt",
        "_\uff23\uff2f\uff2e\uff0etxt"]


@given(st.lists(st.one_of(st.none(), st.integers(0, 200)), max_size=300),
       st.integers(1, 20), st.integers(1, 500))
def test_runs_cover_everything_in_order_within_limits(sizes: list[int | None], max_files: int, max_bytes: int) -> None:
    runs = plan_runs(sizes, max_files, max_bytes)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    for run in runs:
        assert 1 <= len(run) <= max_files
        total = sum(sizes[i] or 0 for i in run)
        assert total <= max_bytes or len(run) == 1
    for a, b in itertools.pairwise(runs):  # greedy: the next item did not fit
        assert len(a) == max_files or sum(sizes[i] or 0 for i in a) + (sizes[b[0]] or 0) > max_bytes


def test_chunks_of_the_issue() -> None:
    assert [len(r) for r in plan_runs([1000] * 250, 100, 50_000_000)] == [100, 100, 50]
    assert [len(r) for r in plan_runs([20_000_000] * 5, 100, 50_000_000)] == [2, 2, 1]


def test_part_and_archive_names() -> None:
    assert part_names("photos", 1) == ["photos.zip"]
    assert part_names("photos", 3) == ["photos.part01.zip", "photos.part02.zip", "photos.part03.zip"]
    assert part_names("p", 120)[-1] == "p.part120.zip"
    assert archive_name(None, "j1") == "export-j1"
    assert archive_name('../my "x".zip', "j1") == "_my _x_"
    assert archive_name("../..", "j1") == "_"
    assert (archive_name(".hidden", "j1"), archive_name("...", "j1"), archive_name(".\x00CON", "j1")) == (
        "hidden", "export-j1", "_CON")
    assert '"' not in archive_name('a"b', "j")


def test_default_names() -> None:
    assert default_name("uploads/demo/a.jpg", "uploads/") == "demo/a.jpg"
    assert default_name("uploads/demo/a.jpg", "uploads/de") == "demo/a.jpg"
    assert default_name("uploads/demo/a.jpg", None) == "a.jpg"


def test_compression_probe() -> None:
    import os

    assert compresses(b'{"name": "value"}\n' * 1000)
    assert not compresses(os.urandom(100_000))
    assert not compresses(b"")


# --- fan-in of transform items (shared/exportitems.py) ----------------------------------


@given(st.permutations(range(6)), st.sets(st.integers(0, 5)))
def test_a_chunk_record_from_items_keeps_source_order_whatever_order_they_finish(order: list[int],
                                                                                failing: set[int]) -> None:
    """Items finish in any order; the chunk record lists outputs in the sources' (archive) order,
    the failed ones under `untransformed`, and the chunk is complete only with every item in."""
    from shared.exportitems import ChunkItems, ItemDone
    from shared.exportplan import SourceInfo, Untransformed
    from shared.messages import ExportItem

    sources = [SourceInfo(key=f"in/{i}.wav", name=f"{i}.mp3", size=10 + i) for i in range(6)]
    items = ChunkItems(chunk=3, bucket="b", items=7, sources=sources, missing=[ExportItem(key="in/gone.wav")])
    for step, i in enumerate(order):
        assert not items.complete
        result = (ItemDone(index=i, untransformed=Untransformed(key=sources[i].key, name=sources[i].name, reason="no"))
                  if i in failing else
                  ItemDone(index=i, output=SourceInfo(key=f"out/{i}.mp3", name=sources[i].name, size=i,
                                                      source=sources[i].key)))
        items = msgspec.structs.replace(items, done=[*items.done, result])
        assert items.done_indexes() == set(order[: step + 1])
    assert items.complete
    record = items.record()
    assert (record.chunk, record.bucket, record.missing) == (3, "b", [ExportItem(key="in/gone.wav")])
    assert [s.source for s in record.found] == [f"in/{i}.wav" for i in range(6) if i not in failing]
    assert [u.key for u in record.untransformed] == [f"in/{i}.wav" for i in range(6) if i in failing]
