"""Run configuration: typed data with its documentation beside each field, and named presets.

A run is a :class:`RunConfig` (what to train on, where to write) holding a
:class:`gan.train.TrainConfig` (what to compute). Presets set training fields; every field can
then be overridden from the command line (flags are generated from the dataclasses, their help
from the field docs). The resolved config is saved with the run as ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gan.train import TrainConfig, choices_of, doc_field


@dataclass(frozen=True)
class RunConfig:
    """What one training run trains on and where its results go."""

    dataset: str = doc_field("dataset name (see `structsearch datasets`)", "shapes")
    graph: str = doc_field("graph: a preset, edges like 'c1->q1, q1->q3', or a .json/.txt file", "independent")
    codes: str | None = doc_field(
        "latent spec (default: the dataset's), e.g. mnist3 or 'cat10,cont,cont;noise=62'", None
    )
    data_dir: str | None = doc_field(
        "folder with the dataset's files (else $STRUCTSEARCH_DATA, then ~/.cache/structsearch)", None
    )
    device: str = doc_field("auto, cpu, cuda, cuda:N or mps", "auto")
    n_eval: int = doc_field("held-out real / fresh generated samples for the scores", 2000)
    shapes_graph: str = doc_field(
        "true factor graph of the synthetic `shapes` set: collider, chain, fork, independent, or edges like 'q2->q1, q2->q3'",
        "collider",
    )
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from :meth:`to_dict`'s form; a missing field takes its default, an unknown one is refused."""
        _known_fields(cls, data, "")
        train = data.get("train", {})
        _known_fields(TrainConfig, train, "train.")
        return cls(**{k: v for k, v in data.items() if k != "train"}, train=TrainConfig(**train))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """A run folder's ``config.json``; ``ValueError`` naming the file when it is not a valid one."""
        try:
            return cls.from_dict(json.loads(Path(path).read_bytes().decode("utf-8")))
        except json.JSONDecodeError as err:
            reason = f"{err.msg} at line {err.lineno} column {err.colno}"
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
        except (ValueError, TypeError) as err:  # unknown field, impossible value, wrong type
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is not a valid structsearch run config ({reason}); restore it, or start the run over in a new folder"
        )


def _known_fields(cls, data: Any, prefix: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix or 'the config'} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(
            f"unknown field {prefix}{unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if unknown[1:] else "")
        )


# Named presets of training fields (nanoGPT's config/*.py, as data).
PRESETS: dict[str, dict[str, Any]] = {
    # InfoGAN's MNIST settings: batch 128, 5,000 updates, lambda_info 1, the full-width nets.
    "paper": dict(n_steps=5000, batch_size=128, lambda_info=1.0, width=1.0, log_every=50, checkpoint_every=500),
    # A complete run on a 2-core CPU in a minute or two: narrow nets, a few hundred steps.
    "quick": dict(n_steps=300, batch_size=64, width=0.25, log_every=25, checkpoint_every=100),
    # InfoGAN-CR's dSprites recipe, as its released code sets it (fjxmlzn/InfoGAN-CR,
    # InfoGAN-CR_dSprites/config.py and gan/infogan_cr.py): 28 epochs of 737,280 images at batch 64
    # (322,560 steps), Adam 1e-3 (G) and 2e-3 (D, Q and the contrastive head) with beta1 0.5,
    # lambda_info 0.05, spectral norm in D, two G updates per step, and the contrastive term at
    # weight 2 from step 288,000. With --codes infogan-cr-dsprites (uniform noise). The modified
    # InfoGAN of their Table 1: add --lambda-struct 0 --lambda-cr 0; InfoGAN-CR: --lambda-struct 0.
    "infogan-cr-dsprites": dict(
        n_steps=322560,
        batch_size=64,
        lr_g=1e-3,
        lr_d=2e-3,
        beta1=0.5,
        lambda_info=0.05,
        d_norm="spectral",
        g_steps=2,
        lambda_cr=2.0,
        cr_start=288000,
        width=1.0,
        log_every=100,
        checkpoint_every=5000,
    ),
    # Tests and smoke checks: seconds.
    "tiny": dict(n_steps=20, batch_size=16, width=0.125, log_every=5, checkpoint_every=10),
}

_ALIASES = {"n_steps": ["--steps"]}


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, **PRESETS[name])


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Flags for every RunConfig and TrainConfig field but ``skip``; defaults are None (= keep)."""
    for title, cls in (("training", TrainConfig), ("run", RunConfig)):
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            if f.name == "train" or f.name in skip:
                continue
            flags = [f"--{f.name.replace('_', '-')}"] + _ALIASES.get(f.name, [])
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            group.add_argument(
                *flags,
                dest=f.name,
                type=kind,
                default=None,
                choices=choices_of(cls, f.name) or None,
                help=f"{f.metadata.get('help', '')} (default: {f.default})",
            )


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Preset first (``args.preset``), then every flag the user gave."""
    cfg = base or RunConfig()
    train = apply_preset(cfg.train, args.preset) if getattr(args, "preset", None) else cfg.train
    train = dataclasses.replace(train, **_given(args, TrainConfig))
    return dataclasses.replace(cfg, **_given(args, RunConfig), train=train)


def _given(args: argparse.Namespace, cls) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"train"}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def check(cfg: RunConfig) -> None:
    """Refuse impossible values with a message naming the value and what is accepted (each
    RunConfig checks itself when it is built)."""
    t = cfg.train
    rules = [
        (t.n_steps >= 0, f"--steps must be >= 0, got {t.n_steps}"),
        (t.batch_size >= 2, f"--batch-size must be >= 2 (batch norm and per-batch fits), got {t.batch_size}"),
        (t.lr_g > 0 and t.lr_d > 0, f"learning rates must be > 0, got lr_g={t.lr_g}, lr_d={t.lr_d}"),
        (t.lambda_info >= 0 and t.lambda_struct >= 0, "lambda_info and lambda_struct must be >= 0"),
        (
            t.anchor_labels == 0 or 0 < t.anchor_labels < 1 or (t.anchor_labels >= 1 and _whole(t.anchor_labels)),
            f"--anchor-labels must be 0 (off), a fraction in (0, 1) or a whole count >= 1, got {t.anchor_labels:g}",
        ),
        (t.lambda_anchor >= 0, f"--lambda-anchor must be >= 0, got {t.lambda_anchor:g}"),
        (t.struct_floor > 0, f"--struct-floor must be > 0, got {t.struct_floor}"),
        (t.width > 0, f"--width must be > 0, got {t.width}"),
        (t.log_every >= 1, f"--log-every must be >= 1, got {t.log_every}"),
        (t.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {t.checkpoint_every}"),
        (cfg.n_eval >= 10, f"--n-eval must be >= 10, got {cfg.n_eval}"),
        (_DEVICE.fullmatch(cfg.device) is not None, f"unknown device {cfg.device!r}; expected {DEVICES}"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


def _whole(x: float) -> bool:
    return float(x).is_integer()  # False for inf and nan


DEVICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a device this machine lacks is refused by name."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if _DEVICE.fullmatch(name) is None:
        raise ValueError(f"unknown device {name!r}; expected {DEVICES}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but this torch build has no MPS; use --device cpu or auto")
    return torch.device(name)


# ---- comparing configs ---------------------------------------------------------------------------

# Fields a resumed run may change (``train --resume``): how long it trains, how often it logs and
# checkpoints, where it runs and where its data files are. ``--max-minutes`` is no field and may
# always change. Anything else would continue the checkpoint under another computation.
RESUME_MAY_CHANGE = frozenset({"train.n_steps", "train.log_every", "train.checkpoint_every", "device", "data_dir"})

# Flags whose name is not the field's (``--`` + the last part with dashes, otherwise).
_FLAGS = {"n_steps": "--steps", "n_trials": "--trials", "objectives": "--objective", "forbidden": "--forbid"}
_FLAGS |= {"seed_graphs": "--seed-graph"}


def flag_of(key: str) -> str:
    """The command-line flag of a (dotted) config field: ``train.n_steps`` -> ``--steps``."""
    name = key.rsplit(".", 1)[-1]
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def differences(old: Any, new: Any, may_differ: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every field of two configs (dataclasses or
    their dicts) that differs, fields in ``may_differ`` left out; tuples and lists compare equal."""
    flat_old, flat_new = _flatten(_as_dict(old)), _flatten(_as_dict(new))
    keys = list(dict.fromkeys([*flat_old, *flat_new]))
    return [
        (k, flat_old.get(k), flat_new.get(k))
        for k in keys
        if k not in may_differ and flat_old.get(k) != flat_new.get(k)
    ]


def describe_difference(diffs: list[tuple[str, Any, Any]], then: str, now: str) -> str:
    """``--objective was ["struct_bic"] <then>, ["shd"] <now>`` for the first, and how many more."""
    key, old, new = diffs[0]
    others = [f for f in dict.fromkeys(flag_of(k) for k, _, _ in diffs[1:]) if f != flag_of(key)]
    more = f" (and {len(others)} more: {', '.join(others)})" if others else ""
    return f"{flag_of(key)} was {json.dumps(old)} {then}, {json.dumps(new)} {now}{more}"


def _as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return flat
