"""A refused answer (cache.invalidated naming its response) never comes back into the cache:
not through a cache.hit committed by a job that read it before the refusal, and not through a
fork that copies the history from before the refusal; and `verify` accepts two refusals of one
key."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplog.eventstore.events import CacheHit, CacheInvalidated, LLMResponded, NewEvent
from steplog.eventstore.record import blob_sha256
from steplog.projections import cache
from steplog.projections.store import open_store
from steplog.projections.tables import cache_lookup, read_cache_table, rebuild
from tests.cli_process import steplog
from tests.on_disk import db_rows

KEY, BAD, GOOD = "k" * 64, "a" * 64, "b" * 64


def _answer(sha: str) -> NewEvent:
    return NewEvent.of(
        LLMResponded(
            provider="p",
            model="m",
            duration_s=0.1,
            tokens_in=1,
            tokens_out=2,
            success=True,
            attempt=1,
            cache_key=KEY,
            response_sha256=sha,
        ),
        step="s",
    )


def _hit(sha: str) -> NewEvent:
    return NewEvent.of(
        CacheHit(cache_key=KEY, response_sha256=sha, origin_job="paid", origin_step="s"), step="s"
    )


def _refuse(sha: str | None) -> NewEvent:
    return NewEvent.of(
        CacheInvalidated(cache_key=KEY, reason="not JSON", response_sha256=sha), step="s"
    )


def test_a_hit_committed_after_the_refusal_does_not_bring_the_answer_back(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.append("paid", [_answer(BAD)])
        store.append("refuser", [_hit(BAD), _refuse(BAD)])
        # a job that looked the key up before the refusal commits its hit afterwards
        store.append("late", [_hit(BAD)])
        assert cache_lookup(store.conn, KEY) is None
        # another answer for the key is cached as usual, and a late refusal of the old one
        # does not remove it
        store.append("payer", [_answer(GOOD)])
        store.append("later", [_refuse(BAD)])
        assert cache_lookup(store.conn, KEY).response_sha256 == GOOD  # type: ignore[union-attr]
        table = read_cache_table(store.conn)
        assert table == cache.project(store.read_all())
        assert table.refused == {(KEY, BAD): 3}
        rebuild(store)
        assert read_cache_table(store.conn) == table


def test_a_refusal_written_before_schema_3_forgets_the_key_as_it_did(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.append("paid", [_answer(BAD), _refuse(None)])
        assert cache_lookup(store.conn, KEY) is None
        store.append("late", [_hit(BAD)])  # no sha was named: nothing to keep out
        assert cache_lookup(store.conn, KEY).response_sha256 == BAD  # type: ignore[union-attr]
        assert read_cache_table(store.conn) == cache.project(store.read_all())


def _json_step(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        "\n".join(
            [
                'name = "refusal"',
                "[providers.remote]",
                'kind = "openai"',
                f'base_url = "http://127.0.0.1:{port}/v1"',
                'model = "fake-model"',
                "[steps.a]",
                'provider = "remote"',
                'prompt = "Give JSON."',
                'output = "json"',
            ]
        )
        + "\n"
    )
    return path


@pytest.mark.slow
def test_a_fork_cut_between_the_answer_and_its_refusal_asks_the_provider_again(tmp_path, fake_llm):
    db = tmp_path / "s.db"
    server = fake_llm
    server.faults.append(("answer", "not JSON at all"))
    pipeline = _json_step(tmp_path, server.port)
    assert steplog(db, "run", str(pipeline), "--job-id", "j").code == 1
    fork = steplog(db, "replay", "j", "--until", "llm.response:a", "--fork", "f")
    assert fork.code == 0, fork.err
    server.faults.append(("answer", '{"ok": true}'))
    resumed = steplog(db, "resume", "f")
    assert resumed.code == 0, resumed.err
    assert len(server.calls) == 2  # the refused answer was not served to the fork
    hits = db_rows(db, "SELECT count(*) FROM events WHERE type = 'cache.hit'")
    assert hits == [(0,)]
    assert steplog(db, "verify").code == 0


@pytest.mark.slow
def test_verify_accepts_two_refused_answers_for_one_key(tmp_path):
    """A step that could not use the provider's answer twice (two cache.invalidated, one key,
    two answers): verify compared cache_refused by cache_key alone, so the two rows collapsed
    and it reported drift (exit 1) on a sound database."""
    db = tmp_path / "r.db"
    answers = sorted((b"not json 1", b"not json 2"), key=blob_sha256, reverse=True)
    with open_store(db) as store:  # the first refused answer's sha256 sorts last
        for answer in answers:
            refusal = CacheInvalidated(
                cache_key="k" * 64, reason="bad_output", response_sha256=blob_sha256(answer)
            )
            store.append("j", [NewEvent.of(refusal, step="a")], blobs=[answer])
    assert db_rows(db, "SELECT count(*) FROM cache_refused") == [(2,)]
    result = steplog(db, "verify")
    assert result.code == 0, result.out + result.err
