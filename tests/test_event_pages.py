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
