"""`events` and `replay` print a long listing a page at a time; pages after the first are laid
out by render._events_rows instead of a rich table (about 4x faster). They must be the bytes
the table prints, for any text an event may hold, at any width."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from steplog.commands.cli.render import LogConsole, _events_rows, _events_table
from steplog.eventstore.record import StoredEvent

# what makes folding hard: wide and combining characters, spaces to break at, control
# characters (shown escaped), emoji, zero-width and the Unicode line breaks
TRICKY = st.text(
    st.sampled_from(
        list('ab z{}":,-/')
        + ["é", "中", "😀", "\u0301", "\t", "\n", "\x1b", "\u200b", "\u2028", "ﾊ"]
    ),
    max_size=300,
)


@st.composite
def events(draw: st.DrawFn) -> StoredEvent:
    return StoredEvent(
        seq=1,
        job_id="j",
        version=draw(st.integers(1, 10**9)),
        ts=draw(st.sampled_from(["2026-12-04T18:52:36.584267Z", "2026-12-04T18:52:36Z"])),
        level=draw(st.sampled_from(["INFO", "WARNING", "DEBUG"])),
        type=draw(st.sampled_from(["step.failed", "llm.response", "provider.circuit_opened"])),
        step=draw(st.none() | st.text(st.sampled_from(list("ab-_中")), max_size=12)),
        data_json=draw(TRICKY | st.text(max_size=200)),
        prev_hash="",
        hash="",
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), min_size=1, max_size=4), st.sampled_from([40, 80, 120, 200]))
def test_a_page_laid_out_by_hand_is_the_bytes_rich_prints(page, width):
    console = LogConsole(soft_wrap=True, file=io.StringIO(), width=width)
    widths = {
        "#": 9,
        "ts": 27,
        "level": 7,
        "type": 23,
        "step": max(4, *(len(e.step or "") for e in page)),
    }
    widths["data"] = max(20, console.width - sum(widths.values()) - 2 * 6 - 5)
    console.print(_events_table(page, widths=widths, header=False))
    assert _events_rows(console, page, widths) == console.file.getvalue()


def test_replay_of_a_large_job_lists_200_cache_keys_and_counts_the_rest(tmp_path):
    import json

    from tests.cli_inprocess import steplog_here

    lines = ['name = "wide"', "[providers.local]", 'kind = "offline"']
    for i in range(203):
        lines += [f"[steps.s{i}]", 'provider = "local"', f'prompt = "step {i}"']
    path = tmp_path / "wide.toml"
    path.write_text("\n".join(lines) + "\n")
    db = tmp_path / "s.db"
    ran = steplog_here(
        db, "run", str(path), "--job-id", "w", "-q", "--workspace", str(tmp_path / "w")
    )
    assert ran.code == 0, ran.err
    shown = steplog_here(db, "replay", "w", "--until", "job.succeeded")
    assert shown.code == 0, shown.err
    assert "… and 3 more cache keys; `--json` lists every one" in shown.out
    document = json.loads(steplog_here(db, "replay", "w", "--until", "job.succeeded", "--json").out)
    assert len(document["cache_index"]) == 203
    # every event is listed, the pages after the first as the table would print them
    numbers = [ln.split("│")[0].strip() for ln in shown.out.splitlines() if "│" in ln]
    listed = [int(n) for n in numbers if n.isdigit()]
    events = len(document["events"])
    assert events == 203 * 5 + 3 and listed[-events:] == list(range(1, events + 1))
