"""Command line: the only reader of argv and the environment, and the only logging setup.

Every user mistake (bad graph, unknown dataset, missing data, bad number, bad flag) exits with
code 2 and a one-line message, never a traceback, and before anything is created. Outputs never
create folders a typo asked for: a file output (``graph --out/--json/--dot``) goes into an existing
folder; a folder output (``--runs-dir``, ``train --out``, ``export --out``) is created inside an
existing folder or anywhere inside ``--runs-dir`` (:mod:`structsearch.inputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gan.latents import SPECS, get_spec
from gan.train import CheckpointError
from structsearch import config as config_mod
from structsearch import inputs
from structsearch.datasets import DatasetError
from structsearch.graph import PRESETS, Graph, GraphError, load_graph

logger = logging.getLogger("structsearch")

USAGE_ERRORS: tuple[type[Exception], ...] = (GraphError, DatasetError, CheckpointError)


class UsageError(Exception):
    """A user mistake found by the CLI itself; printed as one line, exit code 2."""


class RunFailed(Exception):
    """A command that failed once its work had begun (a write, a worker): one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``main`` prints it), not the usage and a SystemExit."""

    def error(self, message: str):
        raise _ParseError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _ParseError(UsageError):
    """A command line argparse refuses; its str() is the whole line to print."""


def cmd_graph(args: argparse.Namespace) -> int:
    for flag in ("out", "json", "dot"):
        if getattr(args, flag):
            _check(inputs.output_file, getattr(args, flag), f"--{flag}")
    spec = _spec(args.codes)
    graph = load_graph(args.graph, spec)
    print(f"codes:   {spec.describe()}")
    print(f"graph:   {graph.key or '(no edges)'}")
    print("parents:")
    for v, ps in graph.parents().items():
        print(f"  {v} <- {', '.join(ps) if ps else '(none)'}")
    if args.json:
        Path(args.json).write_text(graph.to_json() + "\n")
        print(f"json:    {args.json}")
    if args.dot:
        Path(args.dot).write_text(graph.to_dot())
        print(f"dot:     {args.dot}")
    if args.out:
        from structsearch.drawing import draw_graph

        print(f"picture: {draw_graph(graph, args.out)}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from structsearch.datasets import list_datasets

    rows = list_datasets(args.data_dir)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        print(f"{r['name']:<{width}}  {shape:<8} train {r['n_train']:>7,}  test {r['n_test']:>6,}  {r['targets']}")
        print(f"{'':<{width}}  files: {r['files']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from structsearch.trial import Recorder, check_anchors, load_dataset, resolve_graph, run_trial, time_limit

    runs_dir = _check(inputs.output_folder, args.runs_dir, "--runs-dir")
    run_dir = _check(inputs.output_folder, args.out, "--out", inside=runs_dir) if args.out else None
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UsageError(f"--max-minutes must be > 0, got {args.max_minutes}")
    _check_tracking(args.tracking)
    _check_writable(runs_dir, tracking=args.tracking)
    if run_dir is not None:
        _check(inputs.writable_folder, run_dir, "--out")
    if args.resume:
        cfg, graph = _resumed(args, run_dir)
    else:
        cfg = _config(args)
    dataset = load_dataset(cfg, _device(cfg.device))
    if not args.resume:
        graph = resolve_graph(cfg, dataset)
    with _as_usage_errors(ValueError):
        check_anchors(cfg, graph.spec, dataset)
    cfg = dataclasses.replace(cfg, codes=graph.spec.text())  # recorded: a resume never depends on the dataset's default
    if run_dir is None:
        run_dir = runs_dir / f"{cfg.dataset}-{_slug(cfg.graph)}-seed{cfg.train.seed}"
    if not args.resume and (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or --out NEW_FOLDER")
    on_log = time_limit(args.max_minutes) if args.max_minutes else None
    tracker = _tracker(args.tracking, f"train-{cfg.dataset}", runs_dir)
    print(f"training {graph.key or '(no edges)'} on {cfg.dataset} ({graph.spec.describe()}) on {dataset.device}")
    result = run_trial(cfg, graph, dataset, Recorder(run_dir, tracker), resume=args.resume, on_log=on_log)
    if result.status == "stopped":
        print(
            f"stopped: the {args.max_minutes:g}-minute limit was reached at step {result.step} of {cfg.train.n_steps} "
            f"(scored and checkpointed; continue with --out {run_dir} --resume)"
        )
    else:
        print(f"{result.status}: {result.message} ({result.seconds:.0f} s)")
    for key, value in sorted(result.scores.items()):
        print(f"  {key:<16} {value: .4f}")
    print(f"run folder: {run_dir}  (traversals in {run_dir / 'traversals'})")
    if result.run_id:
        where = f"--tracking {tracker.uri}" if args.tracking else f"--runs-dir {runs_dir}"
        print(f"MLflow run {result.run_id}: open with  structsearch ui {where}")
    return 0 if result.status != "diverged" else 1


def _resumed(args: argparse.Namespace, run_dir: Path | None) -> tuple[config_mod.RunConfig, Graph]:
    """The config and graph of ``train --resume``: the run folder's own config.json and graph.json,
    with only the flags in ``config.RESUME_MAY_CHANGE`` (and --max-minutes) allowed to differ."""
    from structsearch.trial import read_run_graph, read_run_record

    if run_dir is None or not (run_dir / "config.json").exists():
        raise UsageError(
            f"--resume needs --out pointing at an existing run folder (with config.json), got {args.out!r}"
        )
    with _as_usage_errors(ValueError):
        base = config_mod.RunConfig.load(run_dir / "config.json")
        graph = read_run_graph(run_dir, get_spec(base.codes) if base.codes else None)
        read_run_record(run_dir)  # a bad run.json is refused before anything is written
    if base.codes is None:  # a run made before codes were recorded
        base = dataclasses.replace(base, codes=graph.spec.text())
    cfg = _config(args, base)
    if cfg.codes != base.codes and _same_spec(cfg.codes, base.codes):  # a preset's name against its text
        cfg = dataclasses.replace(cfg, codes=base.codes)
    changed = config_mod.differences(base, cfg, config_mod.RESUME_MAY_CHANGE)
    if changed:
        allowed = ", ".join(sorted(config_mod.flag_of(k) for k in config_mod.RESUME_MAY_CHANGE))
        raise UsageError(
            f"--resume: {config_mod.describe_difference(changed, f'in {run_dir}', 'in this command')}; "
            f"a resume may change only {allowed} and --max-minutes (start a new run with --out NEW_FOLDER)"
        )
    return cfg, graph


def _same_spec(a: str | None, b: str | None) -> bool:
    """Whether two ``--codes`` texts name one latent spec (``infogan-mnist`` and its written-out text)."""
    try:
        return a is not None and b is not None and get_spec(a) == get_spec(b)
    except ValueError:
        return False


def cmd_optimize(args: argparse.Namespace) -> int:
    import optuna

    from structsearch import search, stacked_search
    from structsearch import study as study_mod
    from structsearch.scores import direction

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    _quiet_trial_failures()
    run = _config(args)
    study = _check(inputs.check_name, args.study if args.study is not None else f"{run.dataset}-{args.space}")
    _check(inputs.output_folder, args.runs_dir, "--runs-dir")
    if args.storage:
        _check(inputs.check_database_url, args.storage)
    _check_tracking(args.tracking)
    default_storage = f"sqlite:///{Path(args.runs_dir) / study / 'study.db'}"
    _check_writable(Path(args.runs_dir), storage=args.storage or default_storage, tracking=args.tracking)
    gpus = _gpus(args.gpus)
    cfg = study_mod.SearchConfig(
        study=study,
        n_trials=args.trials,
        storage=args.storage,
        runs_dir=args.runs_dir,
        tracking=args.tracking,
        space=args.space,
        cross_edges=args.cross_edges,
        max_parents=args.max_parents,
        forbidden=tuple(args.forbid),
        order=tuple(args.order.replace(" ", "").split(",")) if args.order else (),
        candidates=args.candidates,
        objectives=tuple(args.objective or ("struct_bic",)),
        min_info=args.min_info,
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        seed_graphs=tuple(args.seed_graph),
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        run=run,
    )
    if args.workers is None:
        args.workers = 1
        if not gpus and args.stack == 1 and run.device in ("cpu", "auto") and search.cores() > 1:
            # bench/search_throughput.py, 2 cores, 10 quick trials: 2 workers x 1 thread ran 1.15, 1.13,
            # 1.15 and 0.94x the trials per hour of 1 x 2 in 4 paired rounds (docs/results.md, "Search throughput")
            logger.info(
                "workers: 1 (the default; --workers %d shares this CPU's cores among parallel trials, "
                "0.94-1.15x the trials per hour on 2 cores)",
                search.cores(),
            )
    _device(run.device)
    with _as_usage_errors(ValueError):  # user mistakes surface here, before any training
        for name in cfg.objectives:
            direction(name)
        stacked_search.check(run.train, args.stack, args.workers, gpus)
        prepared = search.prepare(cfg)
    if args.stack > 1:
        study_obj = stacked_search.optimize_stacked(cfg, args.stack, prepared)
    else:
        try:
            threads = _threads(args)
            study_obj = search.run_search(cfg, workers=args.workers, gpus=gpus, prepared=prepared, threads=threads)
        except search.WorkersFailed as err:
            raise RunFailed(str(err)) from None
    _print_top(study_obj, cfg, args.top)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import optuna

    from structsearch import search
    from structsearch import study as study_mod

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    _quiet_trial_failures()
    _check(inputs.check_name, args.study)
    _check(inputs.check_database_url, args.storage, existing=True)
    if args.runs_dir:
        _check(inputs.output_folder, args.runs_dir, "--runs-dir")
    _check_tracking(args.tracking)
    with _as_usage_errors(ValueError):
        cfg = study_mod.config_of(args.study, args.storage)
    cfg = dataclasses.replace(cfg, runs_dir=args.runs_dir or cfg.runs_dir, tracking=args.tracking or cfg.tracking)
    _check_writable(Path(cfg.runs_dir), storage=args.storage, tracking=cfg.tracking)
    if args.trials:
        cfg = dataclasses.replace(cfg, n_trials=args.trials)
    if args.device:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device=args.device))
    with _as_usage_errors(ValueError):
        prepared = search.prepare(cfg, worker=study_mod.register_worker(cfg.storage_url(), cfg.study))
    study = search.optimize(cfg, prepared, threads=_threads(args))
    print(f"worker done: {study_mod.trained_graphs(study)}/{cfg.n_trials} graphs trained in study {cfg.study}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from structsearch import study as study_mod
    from structsearch.drawing import draw_graph

    _check(inputs.check_name, args.study)
    out = _check(inputs.output_folder, args.out or Path(args.runs_dir) / args.study / "export", "--out", args.runs_dir)
    _check(inputs.writable_folder, out, "--out")
    study, _ = _existing_study(args)
    best = study_mod.ranked(study)[: args.top]
    if not best:
        raise UsageError(f"study {args.study!r} has no completed trial yet")
    out.mkdir(parents=True, exist_ok=True)
    for rank, trial in enumerate(best, 1):
        graph = Graph.from_json(trial.user_attrs["graph_json"])
        path = out / f"best-{rank}.json"  # always: what `train --graph` reads back
        path.write_text(graph.to_json() + "\n")
        if args.format == "dot":
            path = path.with_suffix(".dot")
            path.write_text(graph.to_dot())
        elif args.format == "png":
            path = draw_graph(graph, path.with_suffix(".png"), title=f"#{rank} trial {trial.number}: {graph.key}")
        print(f"{path}  trial {trial.number}  {graph.key}")
    print(f"retrain one with: structsearch train --graph {out / 'best-1.json'} ...")
    return 0


def _existing_study(args: argparse.Namespace):
    """(study, storage URL) of the Optuna study ``--study`` in ``--storage``, else in its SQLite
    file under ``--runs-dir``; looking for a study never creates one."""
    from structsearch import study as study_mod

    if args.storage:
        storage = _check(inputs.check_database_url, args.storage, existing=True)
    else:
        db = Path(args.runs_dir) / args.study / "study.db"
        if not db.is_file():
            raise UsageError(
                f"no study {args.study!r} under {args.runs_dir} (no {db}); start it with `structsearch optimize "
                f"--study {args.study}`, or pass --runs-dir or --storage"
            )
        storage = f"sqlite:///{db.resolve()}"
    with _as_usage_errors(ValueError):
        return study_mod.load_existing(args.study, storage), storage


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard (the optional extra ``[dashboard]``) on a study's own storage."""
    import optuna

    from structsearch import serve

    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise UsageError(
            "optuna-dashboard is not installed: pip install 'structsearch[dashboard]' (or pip install optuna-dashboard)"
        ) from None
    _check(inputs.check_name, args.study)
    _check(serve.check_port_free, args.port)
    study, storage = _existing_study(args)
    study_id = optuna.storages.get_storage(storage).get_study_id_from_name(study.study_name)
    base = f"http://{serve.HOST}:{args.port}"
    cmd = [sys.executable, "-m", "optuna_dashboard._cli", storage, "--host", serve.HOST, "--port", str(args.port)]
    print(f"starting optuna-dashboard on {base}  (storage {storage}); Ctrl-C stops it")
    page = (f"study {args.study}", f"{base}/dashboard/studies/{study_id}")
    return _serve(cmd, f"{base}/api/meta", [page], args.open)


def cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the project's store, printing (and with --open opening) the compare-runs
    page of a study's top runs; the server stops with this command (:mod:`structsearch.serve`)."""
    from structsearch import serve, tracking

    runs_dir = _check(inputs.output_folder, args.runs_dir, "--runs-dir")
    if args.study is not None:
        _check(inputs.check_name, args.study)
    _check(serve.check_port_free, args.port)
    uri = args.tracking or tracking.default_uri(runs_dir)
    _check_tracking(uri)
    with _as_usage_errors(ValueError):
        pages = _ui_pages(uri, args.study, args.storage, args.top, f"http://{serve.HOST}:{args.port}")
    # One worker: a local UI has one user, and MLflow's default 4 take a minute to start on 2 cores.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", serve.HOST, "--workers", "1"]
    # No job runner: its 7 huey consumers serve GenAI features (judges, trace rollups), not runs.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    print(f"starting the MLflow UI on http://{serve.HOST}:{args.port}  (store {uri}); Ctrl-C stops it")
    health = f"http://{serve.HOST}:{args.port}/health"
    return _serve(cmd + ["--port", str(args.port)], health, pages, args.open, env)


def _ui_pages(uri: str, study: str | None, storage: str | None, top: int, base: str) -> list[tuple[str, str]]:
    """(what, URL) of the pages to print: the study's compare-runs page of its ``top`` best runs (as
    the study ranks them) and its experiment; the UI's front page when the store holds no study."""
    from structsearch import study as study_mod
    from structsearch import tracking

    found = tracking.find_study(uri, study)
    if found is None:
        if study is not None:
            raise ValueError(f"no study {study!r} in the tracking store {uri} (no experiment study-{study})")
        return [("MLflow UI (no study tracked yet)", f"{base}/#/experiments?{tracking.WORKFLOW}")]
    pages = [(f"study {found.study}: all runs", tracking.experiment_url(base, found.experiment_id))]
    storage = storage or found.storage
    try:
        if not storage:
            raise ValueError("its MLflow run records none; pass --storage")
        ranked = study_mod.ranked(
            study_mod.load_existing(found.study, inputs.check_database_url(storage, existing=True))
        )
    except ValueError as err:  # a storage that moved: the experiment page still works
        print(f"no compare page: the Optuna storage of study {found.study} does not open ({err})")
        return pages
    run_ids = list(dict.fromkeys(t.user_attrs["mlflow_run_id"] for t in ranked if t.user_attrs.get("mlflow_run_id")))[
        :top
    ]
    if run_ids:
        compare = tracking.compare_url(base, found.experiment_id, run_ids)
        pages.insert(0, (f"study {found.study}: its {len(run_ids)} best runs compared", compare))
    return pages


def _serve(
    cmd: list[str], health: str, pages: list[tuple[str, str]], open_first: bool, env: dict[str, str] | None = None
) -> int:
    """Run a UI server until it exits or we are stopped; print ``pages`` once it answers, open the
    first one in a browser when asked. Ctrl-C and SIGTERM stop it and return 0."""
    import webbrowser

    from structsearch import serve

    try:
        with serve.server_group(cmd, env) as server:
            if not serve.wait_until_answering(health, server, timeout=180):
                code = server.poll()
                raise UsageError(f"the server did not answer at {health} (exit code {code}); see its output above")
            for what, url in pages:
                print(f"{what}:\n  {url}", flush=True)  # flushed: a pipe or a log file sees it at once
            if open_first and not webbrowser.open(pages[0][1]):
                print("--open: no web browser found here; open the URL above yourself")
            return server.wait()
    except KeyboardInterrupt:
        print("stopped")
        return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from structsearch.trial import evaluate_run

    run_dir = Path(args.run)
    if args.tracking != "none":
        _check_tracking(args.tracking)
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir} is not a run folder (no config.json); give the folder `structsearch train` wrote")
    with _as_usage_errors(ValueError):
        cfg = config_mod.RunConfig.load(run_dir / "config.json")
    _check(inputs.writable_folder, run_dir, "run folder")  # evaluation.json goes there
    tracker = None
    if args.tracking != "none" and (run_dir / "run.json").exists():
        from structsearch.trial import read_run_record

        with _as_usage_errors(ValueError):
            uri = args.tracking or read_run_record(run_dir).get("tracking_uri")
        if uri:
            _check(inputs.writable_database, uri, "tracking URI")
        tracker = _tracker(uri, f"train-{cfg.dataset}", Path(args.runs_dir)) if uri else None
    with _as_usage_errors(ValueError, FileNotFoundError):
        scores = evaluate_run(run_dir, args.metrics, args.scale, tracker, args.device)
    print(f"{'score':<32} value")
    for key in sorted(k for k in scores if not k.startswith("time/")):
        print(f"{key:<32} {scores[key]: .4f}")
    print(f"\n{'seconds':<32}")
    for key in sorted(k for k in scores if k.startswith("time/")):
        print(f"{key:<32} {scores[key]: .1f}")
    return 0


def cmd_learn_structure(args: argparse.Namespace) -> int:
    from gan import dag
    from structsearch.pairs import rank_of
    from structsearch.scoring import LearnedGraph, learn_structure
    from structsearch.trial import anchor_labels_table, real_codes, real_pair_ranking

    run_dir = Path(args.run)
    if not (run_dir / "config.json").exists():
        raise UsageError(f"{run_dir} is not a run folder (no config.json); give the folder `structsearch train` wrote")
    if args.n is not None and args.n < 10:
        raise UsageError(f"--n must be >= 10, got {args.n}")
    if not 0 < args.significance_level < 1:
        raise UsageError(f"--significance-level must be in (0, 1), got {args.significance_level}")
    if args.restarts < 0:
        raise UsageError(f"--restarts must be >= 0, got {args.restarts}")
    with _as_usage_errors(ValueError, FileNotFoundError):
        if args.table == "anchors":
            cfg, graph, dataset, table = anchor_labels_table(run_dir, args.device)
        elif args.table == "pairs":
            cfg, graph, dataset, ranked = real_pair_ranking(run_dir, args.n, args.device)
        else:
            cfg, graph, dataset, table = real_codes(run_dir, args.n, args.device)
    if args.table == "pairs":
        best = ranked[0]
        learned = LearnedGraph(
            "pair criterion", "dag", best.edges, (), f"all {len(ranked)} DAGs, structsearch/pairs.py"
        )
    else:
        learned = learn_structure(
            table, args.method, restarts=args.restarts, significance_level=args.significance_level, seed=args.seed
        )
    anchors = cfg.train.anchor_labels
    print(f"run:        {run_dir} ({cfg.dataset}, trained with graph {graph.key or '(no edges)'})")
    print(f"anchors:    {_anchors_line(run_dir) if anchors else 'none'}")
    if args.table == "anchors":
        print(f"table:      the known values of the {len(table)} anchored training images (no network)")
    elif args.table == "pairs":
        print(
            f"table:      Q's codes of {len(ranked[0].per_pair)} held-out real intervention pairs (x, x'), no factor values"
        )
    else:
        print(f"table:      Q's codes of {len(table)} held-out real images")
    print(f"method:     {learned.method} ({learned.detail})")
    print(f"edges:      {_edges(learned.directed, '->')}")
    if args.table == "pairs":
        for i, s in enumerate(ranked[:5]):
            print(f"{'ranking:' if i == 0 else '':<12}{i + 1}. {s.score:+.4f} nats/pair  {_edges(s.edges, '->')}")
    if learned.kind == "pdag":
        print(f"undirected: {_edges(learned.undirected, '-')}")
    spec = graph.spec
    kind = {f"q{i + 1}": code.kind for i, code in enumerate(spec.codes)}
    into_categorical = [(u, v) for u, v in learned.directed if kind[v] == "categorical" and kind[u] == "continuous"]
    if into_categorical:
        print(
            f"note:       {_edges(into_categorical, '->')}: a continuous parent of a categorical code, "
            "which structsearch's graphs forbid (PC does not know the rule)"
        )
    if (run_dir / "scores.json").exists() and "anchor_r2" in (scores := _scores(run_dir)):
        print(f"anchor_r2:  {scores['anchor_r2']:.3f} (scores.json: how well the codes match the known factors)")
    truth = getattr(dataset, "true_edges", None)
    if truth is None:
        print(f"truth:      {cfg.dataset} has no known factor graph")
        return 0
    nodes = [f"q{i + 1}" for i in range(len(graph.spec.codes))]
    directed, undirected = dag.cpdag(truth, nodes)
    print(f"truth:      {_edges(truth, '->')}; its class: {_edges(directed + undirected, '->', undirected)}")
    verdict = "yes" if learned.equivalent_to(truth, nodes) else "no, not"
    print(f"equivalent: {verdict} Markov-equivalent to the true graph (code i read as factor i)")
    if args.table == "pairs":  # interventions tell Markov-equivalent DAGs apart
        rank = rank_of(ranked, truth)
        print(f"true DAG:   {'yes' if set(learned.directed) == set(truth) else 'no'}, ranked {rank}/{len(ranked)}")
    if not anchors:
        print("note:       an unanchored run's code i need not be factor i (docs/design.md section 8)")
    return 0


def _scores(run_dir: Path) -> dict[str, float]:
    import json

    return json.loads((run_dir / "scores.json").read_text()).get("scores", {})


def _anchors_line(run_dir: Path) -> str:
    import json

    record = json.loads((run_dir / "anchors.json").read_text()) if (run_dir / "anchors.json").exists() else {}
    if not record:
        return "yes (no anchors.json)"
    count, codes = record["count"], ", ".join(record["codes"])
    return f"--anchor-labels {record['anchor_labels']:g}: {count} images, codes {codes}, seed {record['seed']}"


def _edges(edges, arrow: str, undirected=()) -> str:
    return ", ".join(f"{u}{'-' if (u, v) in undirected else arrow}{v}" for u, v in edges) or "(none)"


def cmd_identifiability(args: argparse.Namespace) -> int:
    from structsearch.identifiability import coordinate_check, format_table

    with _as_usage_errors(ValueError):  # a bad graph is a DatasetError, which main reports itself
        results = coordinate_check(args.shapes_graph, n=args.n, seed=args.seed, n_remixes=args.remixes)
    print(f"shapes factors: n={args.n}, seed {args.seed}, {args.remixes} random remixes")
    print(format_table(results))
    return 0


def _print_top(study, cfg, top: int) -> None:
    from structsearch import study as study_mod

    best = study_mod.ranked(study)[:top]
    n_graphs, n_trials = study_mod.trained_graphs(study), study_mod.finished(study)
    print(f"\nstudy {cfg.study}: {n_graphs} graphs trained in {n_trials} trials; top {len(best)} graphs")
    header = ["rank", "trial", *cfg.objectives, "info_min", "mlflow run", "graph"]
    rows = []
    for rank, t in enumerate(best, 1):
        scores = t.user_attrs.get("scores", {})
        infeasible = "" if all(v <= 0 for v in t.user_attrs.get("constraint", [0])) else " (infeasible)"
        rows.append(
            [
                str(rank),
                str(t.number),
                *(f"{v:.4g}" for v in t.values),
                f"{scores.get('info_min', float('nan')):.3f}",
                (t.user_attrs.get("mlflow_run_id") or "-")[:12],
                t.user_attrs.get("graph_key", "") + infeasible,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    train = cfg.run.train
    if train.anchor_labels > 0 and best:
        print(
            "note: with anchors, a graph learned from their known values alone can beat every trial's codes "
            "(on shapes it found the true class every time, the codes at most 4 in 9: docs/results.md): "
            f"structsearch learn-structure {best[0].user_attrs.get('run_dir', 'RUN')} --table anchors"
        )
    if train.anchor_labels == 0 and train.lambda_pair == 0:
        print(
            "note: trained on i.i.d. images only, so this ranking is not an identification of the true graph: "
            "each trial's codes have coordinates of their own (docs/design.md section 8; "
            "try `structsearch identifiability`, --anchor-labels or --lambda-pair)"
        )
    print(
        f"compare them: structsearch ui --runs-dir {cfg.runs_dir} --study {cfg.study}   (MLflow experiment study-{cfg.study})"
    )


def _gpus(text: str | None) -> list[str]:
    """``--gpus 0,1``: GPU numbers, refused on a machine where torch sees no CUDA GPU."""
    import torch

    ids = [g.strip() for g in text.split(",")] if text is not None else []
    if any(not g.isdigit() for g in ids):
        raise UsageError(f"--gpus {text!r}: expected comma-separated GPU numbers such as 0 or 0,1")
    if ids and not torch.cuda.is_available():
        raise UsageError(
            f"--gpus {text} asked for, but torch sees no CUDA GPU; drop --gpus (--workers N runs N CPU workers)"
        )
    return ids


def _threads(args: argparse.Namespace) -> int | None:
    """Torch threads per trial: ``--threads``, else ``OMP_NUM_THREADS``, else None (the search
    shares the cores among the live workers on this machine)."""
    if args.threads:
        return args.threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def _check(check: Callable, *args, **kwargs):
    """``check(*args)`` with its ValueError turned into a one-line usage error."""
    with _as_usage_errors(ValueError):
        return check(*args, **kwargs)


def _check_tracking(uri: str | None) -> None:
    """A --tracking URI refused before anything is created (syntax, folder, driver, a server that is down)."""
    if uri is not None:
        from structsearch.tracking import check_uri

        _check(check_uri, uri)


def _check_writable(runs_dir: Path, storage: str | None = None, tracking: str | None = None) -> None:
    """Refuse, before any work, a runs folder or a SQLite store (the study's, the default or given
    MLflow store) this command could not write: one line with the OS error, exit 2."""
    _check(inputs.writable_folder, runs_dir, "--runs-dir")
    if storage:
        _check(inputs.writable_database, storage)
    if tracking != "none":
        _check(inputs.writable_database, tracking or f"sqlite:///{runs_dir / 'mlflow.db'}", "tracking URI")


# Errors of a write that failed once the work had begun: a disk that filled, a folder or a mount
# made read-only under a running command. Exit 1: the command was right, the machine failed it.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
SQLITE_WRITE_ERRORS = ("database or disk is full", "readonly database", "unable to open database file", "disk i/o")


def _write_failure(err: BaseException | None) -> str | None:
    """What could not be written and the OS's reason, if ``err`` or an error that led to it is a
    failed write; None for any other error."""
    import sqlite3

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return f"cannot write {err.filename or 'a file'}: {err.strerror}"
        if isinstance(err, sqlite3.OperationalError) and any(s in str(err).lower() for s in SQLITE_WRITE_ERRORS):
            return f"cannot write the SQLite database: {err}"
        err = err.__cause__ or err.__context__
    return None


def _quiet_trial_failures() -> None:
    """Optuna logs a trial that raised with its traceback, then the CLI reports the same error:
    keep Optuna's one-line warning only, and not even that for a failed write (our line says it)."""
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_trial_failure)  # the same function object: added once


def _trial_failure(record: logging.LogRecord) -> bool:
    if record.getMessage().endswith("failed with value None."):
        return False
    if record.exc_info:
        if _write_failure(record.exc_info[1]):
            return False
        record.exc_info, record.exc_text = None, None
    return True


def _thread_error(hook: threading.ExceptHookArgs) -> None:
    """A failed write in a library's thread (Optuna's heartbeats) is one line too; the command's
    own next write then ends it."""
    reason = _write_failure(hook.exc_value)
    if reason is None:
        threading.__excepthook__(hook)
    else:
        name = hook.thread.name if hook.thread else "a thread"
        print(f"structsearch: warning: {reason} (in {name})", file=sys.stderr)


@contextlib.contextmanager
def _as_usage_errors(*kinds: type[Exception]):
    try:
        yield
    except kinds as err:
        raise UsageError(str(err)) from None


def _config(args: argparse.Namespace, base: config_mod.RunConfig | None = None) -> config_mod.RunConfig:
    """The run config of a command line (a config validates itself when built)."""
    try:
        cfg = config_mod.config_from_args(args, base)
        get_spec(cfg.codes) if cfg.codes else None
    except ValueError as err:
        raise UsageError(str(err)) from None
    return cfg


def _device(name: str):
    try:
        return config_mod.resolve_device(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _tracker(uri: str | None, experiment: str, runs_dir: Path):
    from structsearch.tracking import make_tracker

    try:
        return make_tracker(uri, experiment, runs_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _slug(text: str) -> str:
    name = Path(text).stem if Path(text).suffix in (".json", ".txt", ".edges") else text
    slug = "".join(ch if ch.isalnum() else "-" for ch in name)
    return "-".join(filter(None, slug.split("-")))[:60] or "graph"


def _spec(text: str):
    try:
        return get_spec(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


AFTER_WRITE_FAILURE = (
    "make room or make it writable, then run the same command again (optimize and worker resume the study, "
    "train --resume the run)"
)
THREADS_HELP = (
    "torch threads per trial (default: OMP_NUM_THREADS, else the cores divided among the live workers on this machine)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="structsearch",
        description="Search DAGs over InfoGAN codes: train a GAN regularized by each graph, score it, compare in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("graph", help="validate a graph, print its canonical form and parents, draw it")
    p.add_argument("graph", help=f"a preset ({', '.join(PRESETS)}), edges like 'c1->q1, q1->q3', or a .json/.txt file")
    p.add_argument(
        "--codes",
        default="mnist",
        help=f"latent spec: a preset ({', '.join(SPECS)}) or e.g. 'cat10,cont,cont;noise=62' (noise=uniform62: uniform noise)",
    )
    p.add_argument("--out", help="write a PNG picture of the graph here")
    p.add_argument("--json", help="write the graph as JSON here")
    p.add_argument("--dot", help="write the graph as Graphviz DOT here")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("datasets", help="list the datasets with their sizes, factors and where their files are")
    p.add_argument("--data-dir", help="also look in this folder")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train one graph: InfoGAN + the structural regularizer, scores, MLflow")
    p.add_argument(
        "--preset",
        choices=list(config_mod.PRESETS),
        help=f"training preset ({', '.join(config_mod.PRESETS)}); flags override it",
    )
    p.add_argument(
        "--out",
        help="run folder, created inside an existing folder or inside --runs-dir (default: runs/<dataset>-<graph>-seed<S>)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--runs-dir",
        default="runs",
        help="where runs and the default MLflow store live, created inside an existing folder (default: runs)",
    )
    p.add_argument("--tracking", help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db), or 'none'")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop training after this much wall time, then score, checkpoint and write traversals as usual",
    )
    config_mod.add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("optimize", help="search graphs with Optuna: one trial = one graph trained and scored")
    p.add_argument(
        "--trials",
        type=inputs.count,
        default=50,
        help="distinct graphs to train (default: 50; the whole space when it holds fewer); repeats are free",
    )
    p.add_argument(
        "--study",
        help=f"study name, {inputs.NAME_PATTERN} (default: <dataset>-<space>); rerunning resumes it, with the same "
        "options but for --trials, --storage, --runs-dir, --tracking, --device, --data-dir and --log-every",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default: sqlite:///<runs-dir>/<study>/study.db; postgresql://... for many machines)",
    )
    p.add_argument("--preset", choices=list(config_mod.PRESETS), help="training preset of every trial")
    p.add_argument(
        "--space",
        default="ordered",
        choices=["ordered", "fixed-order", "candidates", "brute-force", "classes"],
        help="search space (default: ordered; classes: one DAG per Markov class, for struct_bic)",
    )
    p.add_argument("--cross-edges", action="store_true", help="also search edges ci->qj, i != j")
    p.add_argument("--max-parents", type=int, help="at most this many q parents per q node")
    p.add_argument(
        "--forbid", action="append", default=[], metavar="EDGE", help="an edge never proposed, e.g. q3->q1 (repeatable)"
    )
    p.add_argument("--order", help="fixed-order space: topological order of the q nodes, e.g. q1,q2,q3")
    p.add_argument("--candidates", help="candidates space: file with one graph per line (or a JSON list)")
    p.add_argument(
        "--objective",
        action="append",
        help="objective by name (repeat for a multi-objective study; default: struct_bic)",
    )
    p.add_argument("--min-info", type=float, help="trials whose worst code has info below this are infeasible")
    p.add_argument(
        "--sampler",
        default="tpe",
        choices=["tpe", "gp", "random", "nsga2", "grid"],
        help="Optuna sampler (default: tpe; grid: every graph of the space once, Optuna's BruteForceSampler)",
    )
    p.add_argument(
        "--pruner", default="median", choices=["none", "median", "hyperband"], help="pruner (default: median)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the sampler and, through the trial number, of every trial"
    )
    p.add_argument(
        "--seed-graph", action="append", default=[], help="a graph tried first (repeatable); independent always is"
    )
    p.add_argument(
        "--workers",
        type=inputs.count,
        default=None,
        help="worker processes on this machine sharing the study (default 1)",
    )
    p.add_argument("--threads", type=inputs.count, help=THREADS_HELP)
    p.add_argument("--gpus", help="comma-separated GPU ids; worker i gets GPU i mod len")
    p.add_argument(
        "--stack",
        type=inputs.count,
        default=1,
        help="trials trained at a time in this process as one stacked model (default: 1; fp32, no --lambda-pair)",
    )
    p.add_argument("--top", type=inputs.count, default=5, help="rows of the final table")
    p.add_argument("--runs-dir", default="runs", help="where runs, studies and the default MLflow store live")
    p.add_argument("--tracking", help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db), or 'none'")
    p.add_argument("--heartbeat-interval", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--grace-period", type=int, default=60, help=argparse.SUPPRESS)
    config_mod.add_config_arguments(p, skip=("graph", "seed"))
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("worker", help="join an existing study from another process or machine")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", required=True, help="the study's Optuna storage URL")
    p.add_argument(
        "--trials", type=inputs.count, help="distinct graphs the study should train (default: the study's own)"
    )
    p.add_argument("--runs-dir", help="where this worker writes its runs (default: the study's)")
    p.add_argument("--tracking", help="MLflow tracking URI (default: the study's)")
    p.add_argument("--device", help="device of this worker (default: the study's)")
    p.add_argument("--threads", type=inputs.count, help=THREADS_HELP)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("export", help="write the best graphs of a study (json, dot or png)")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", help="Optuna storage URL (default: the study's SQLite file under --runs-dir)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--top", type=inputs.count, default=1, help="how many graphs (default: 1)")
    p.add_argument(
        "--format",
        default="json",
        choices=["json", "dot", "png"],
        help="json, or also a DOT file or a picture beside each JSON file (default: json)",
    )
    p.add_argument("--out", help="folder, created inside an existing one (default: <runs-dir>/<study>/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="recompute every metric of a trained run from its checkpoint")
    p.add_argument("run", help="run folder written by `structsearch train`")
    p.add_argument(
        "--metrics",
        default="all",
        help="comma-separated extra metrics (mig,dci,sap,modularity,factorvae,betavae,shd,fid), 'all' the dataset allows, or 'none' (only the base scores)",
    )
    p.add_argument(
        "--scale",
        type=inputs.positive_number,
        default=1.0,
        help="fraction (> 0) of disentanglement_lib's sample counts (1.0: comparable)",
    )
    p.add_argument("--device", help="device (default: the run's)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tracking", help="MLflow URI to log to (default: the run's own), or 'none'")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "learn-structure",
        help="the baseline to a search: learn a graph over a trained run's codes of real images (pgmpy)",
    )
    p.add_argument("run", help="run folder written by `structsearch train` (ideally trained with --anchor-labels)")
    p.add_argument(
        "--method",
        default="hill-climb",
        choices=["hill-climb", "pc"],
        help="hill-climb: BIC with random restarts (a DAG); pc: the PC algorithm (a PDAG) (default: hill-climb)",
    )
    p.add_argument(
        "--table",
        default="codes",
        choices=["codes", "anchors", "pairs"],
        help="codes: Q's codes of held-out real images; anchors: the anchored images' known values, "
        "no network (a run trained with --anchor-labels); pairs: Q's codes of held-out real intervention "
        "pairs, every DAG ranked by the pair criterion (shapes; --method does not apply) (default: codes)",
    )
    p.add_argument(
        "--n", type=int, help="codes, pairs: held-out real images or pairs read (default: the run's --n-eval)"
    )
    p.add_argument("--significance-level", type=float, default=0.01, help="pc: CI tests' level (default: 0.01)")
    p.add_argument("--restarts", type=int, default=10, help="hill-climb: random starting DAGs (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="hill-climb: seed of the starting DAGs (default: 0)")
    p.add_argument("--device", help="device (default: the run's)")
    p.set_defaults(func=cmd_learn_structure)

    p = sub.add_parser(
        "identifiability", help="score all 25 DAGs on shapes' true factors in several coordinate systems (no training)"
    )
    p.add_argument(
        "--shapes-graph",
        default="collider",
        help="true graph: collider, chain, fork, independent, or edges like 'q2->q1, q2->q3' (default: collider)",
    )
    p.add_argument("--n", type=int, default=5000, help="factor rows sampled (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the remixes (default: 0)")
    p.add_argument("--remixes", type=int, default=3, help="random invertible linear remixes (default: 3)")
    p.set_defaults(func=cmd_identifiability)

    p = sub.add_parser(
        "ui", help="start the MLflow UI on the project's tracking store (127.0.0.1) at a study's top runs compared"
    )
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tracking", help="tracking URI (default: sqlite:///<runs-dir>/mlflow.db)")
    p.add_argument("--port", type=inputs.port, default=5000, help="port on 127.0.0.1, 1-65535 (default: 5000)")
    p.add_argument("--study", help="the study whose runs to compare (default: the one tracked last)")
    p.add_argument("--storage", help="the study's Optuna storage URL (default: the one its MLflow run records)")
    p.add_argument("--top", type=inputs.count, default=5, help="best runs on the compare page (default: 5)")
    p.add_argument("--open", action="store_true", help="open the compare page in a web browser")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "dashboard", help="start optuna-dashboard on a study's storage (pip install 'structsearch[dashboard]')"
    )
    p.add_argument("--study", required=True)
    p.add_argument("--storage", help="Optuna storage URL (default: the study's SQLite file under --runs-dir)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--port", type=inputs.port, default=8080, help="port on 127.0.0.1, 1-65535 (default: 8080)")
    p.add_argument("--open", action="store_true", help="open the study's page in a web browser")
    p.set_defaults(func=cmd_dashboard)
    return parser


def _quiet_libraries(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(("pgmpy", "mlflow", "alembic"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ParseError as err:
        print(err, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # pgmpy's, mlflow's and alembic's INFO lines drown the progress bars
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_libraries)
    func: Callable[[argparse.Namespace], int] = args.func
    threading.excepthook = _thread_error
    try:
        return func(args)
    except (UsageError, *USAGE_ERRORS) as err:
        print(f"structsearch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RunFailed as err:
        print(f"structsearch {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        reason = _write_failure(err)
        if reason is None:
            raise
        print(f"structsearch {args.command}: error: {reason}; {AFTER_WRITE_FAILURE}", file=sys.stderr)
        return 1
