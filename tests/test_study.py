"""The study's own tables (claims, workers) and per-worker samplers, on real SQLite storage."""

from __future__ import annotations

import multiprocessing as mp

import optuna
import pytest

from structsearch import study as study_mod
from structsearch.study import SearchConfig, claim_graph, register_worker


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_a_graph_is_claimed_once(tmp_path) -> None:
    url = _url(tmp_path)
    assert claim_graph(url, "s", "c1->q1", 3) == 3
    assert claim_graph(url, "s", "c1->q1", 5) == 3  # taken: the holder is named
    assert claim_graph(url, "s", "c1->q1", 3) == 3  # a retry of the holder keeps it
    assert claim_graph(url, "other", "c1->q1", 5) == 5  # claims are per study
    assert claim_graph(url, "s", "c1->q1, q1->q2", 5) == 5


def _claim_all(url: str, worker: int, keys: list[str], out) -> None:
    out.put([(key, claim_graph(url, "s", key, worker)) for key in keys])


@pytest.mark.slow
def test_racing_workers_each_win_a_graph_once(tmp_path) -> None:
    """Four processes claim the same 30 graphs at once: every graph has exactly one holder."""
    url, keys = _url(tmp_path), [f"c1->q1, q1->q{i}" for i in range(2, 32)]
    claim_graph(url, "s", "warm-up", -1)  # the tables exist before the race
    out = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_claim_all, args=(url, w, keys, out)) for w in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    for i, key in enumerate(keys):
        holders = {r[i][1] for r in results}
        assert len(holders) == 1, (key, holders)  # every process was told the same holder
        assert sum(r[i][1] == w for w, r in enumerate(results)) <= 1  # ...and at most one won it


def test_workers_get_distinct_indices_and_samplers(tmp_path) -> None:
    url = _url(tmp_path)
    indices = [register_worker(url, "s") for _ in range(3)]
    assert len(set(indices)) == 3 and min(indices) >= 1
    cfg = SearchConfig(study="s", sampler="random", seed=7)
    draws = []
    for worker in (0, *indices):
        sampler = study_mod.make_sampler(cfg, worker)
        study = optuna.create_study(sampler=sampler)
        draws.append(tuple(study.ask().suggest_float("x", 0, 1) for _ in range(1)))
    assert len(set(draws)) == len(draws)  # each worker its own stream
    again = optuna.create_study(sampler=study_mod.make_sampler(cfg, 0)).ask().suggest_float("x", 0, 1)
    assert (again,) == draws[0]  # worker 0 is the study seed itself: a lone worker is reproducible
