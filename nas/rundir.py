"""The run directory: the interface between the stages, and the only code that knows its layout.

    config.yaml            the space as trained, the data reference, the training settings
    split.json             the train / val / test split, drawn once
    supernet.safetensors   supernet weights; train_state.pt (optimizer), train_state.json (progress)
    latency_table.json     the device's lookup table (+ calibration and validation)
    study.db               the Optuna study (SQLite) unless an external storage was given; its name: study_name()
    trials.csv, pareto.csv, pareto.png, hypervolume.png, latency_fit.png (nas report)
    exports/<name>/        standalone models
    manifest.json          versions, settings, device fingerprint, stage records, result
    tensorboard/           with --tensorboard: training and search scalars (nas.tensorboard)
    nas.log                the run's log: the console's lines and debug detail (nas.log)
    run.yaml               `nas run`'s settings as given (nas.config): `nas run --config <run>/run.yaml` replays it

Every stage reads and writes through `RunDir`; files are written atomically (nas.io).
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from nas.errors import NasError
from nas.io import write_json, write_text

CONFIG = "config.yaml"
SPLIT = "split.json"
WEIGHTS = "supernet.safetensors"
STATE = "train_state.pt"
STATE_JSON = "train_state.json"
TABLE = "latency_table.json"
STUDY = "study.db"
TRIALS = "trials.csv"
PARETO_CSV = "pareto.csv"
PARETO_PNG = "pareto.png"
HYPERVOLUME_PNG = "hypervolume.png"  # the feasible front's hypervolume after each trial (nas.report)
LATENCY_FIT_PNG = "latency_fit.png"  # the table's predictions against measured models (nas report)
MANIFEST = "manifest.json"
RUN_CONFIG = "run.yaml"
LOG = "nas.log"
TENSORBOARD = "tensorboard"  # nas run --tensorboard: training and search scalars (nas.tensorboard)
EXPORTS = "exports"
VERIFY = "verify"  # the verification's training states (nas.verify)
VERIFY_JSON = "verify/verify.json"  # its candidates, rungs and pick
VERIFY_CANDIDATES = "verify/candidates.json"  # the candidates as chosen and measured, kept for a resume
RAY_TRAIN = "ray_train"


def versions() -> dict:
    names = ["torch", "timm", "optuna", "ray", "numpy", "fvcore", "vit-nas"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


def space_record(space) -> dict:
    """The space as plain YAML-able data (config.yaml); `RunDir.space_and_data` reads it back."""
    from dataclasses import asdict

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(asdict(space))


class RunDir:
    """One run directory; `path(name)` for a file, typed readers for what stages exchange."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    # ---- readers ----------------------------------------------------------------------------

    def space_and_data(self):
        """The search space (as trained) and the data reference recorded in config.yaml."""
        from nas.space import SearchSpace

        if not self.has(CONFIG):
            raise NasError(
                f"{self.root} holds no {CONFIG}: train a supernet into it first (nas train --out {self.root})"
            )
        config = yaml.safe_load(self.path(CONFIG).read_text())
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["space"].items()}
        limits = fields.get("choice_limits") or {}
        if "taylor_orders" in fields:  # runs written before kernels declared their choices
            limits = {"taylor": {"order": fields.pop("taylor_orders"), "variant": fields.pop("taylor_variants")}}
        fields["choice_limits"] = {k: {o: tuple(v) for o, v in opts.items()} for k, opts in limits.items()}
        return SearchSpace(**fields), config["data"]

    def split_size(self, name: str) -> int:
        """How many images the run's split.json puts in split `name` (train / val / test)."""
        if not self.has(SPLIT):
            raise NasError(
                f"{self.root} holds no {SPLIT}: train a supernet into it first (nas train --out {self.root})"
            )
        try:
            indices = json.loads(self.path(SPLIT).read_text())[name]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise NasError(f"{self.path(SPLIT)}: not a split file with a '{name}' list; the file is damaged") from None
        if not isinstance(indices, list):
            raise NasError(f"{self.path(SPLIT)}: '{name}' must be a list of image indices; the file is damaged")
        return len(indices)

    def supernet(self, space):
        """The trained supernet; a missing, corrupt, truncated or mismatched file is a NasError."""
        from nas.supernet import SuperNet
        from nas.weights import load_weights

        path = self.path(WEIGHTS)
        if not path.is_file():
            raise NasError(f"{path} does not exist; train the supernet first (nas train --out {self.root})")
        net = SuperNet(space)
        state = load_weights(path, "supernet checkpoint for this space")[0]  # a damaged file or changed bytes: one line
        try:
            net.load_state_dict(state)
        except Exception as error:  # noqa: BLE001 — safetensors and torch raise several types here
            raise NasError(
                f"{path}: not a readable supernet checkpoint for this space ({type(error).__name__}: {str(error)[:200]})"
            ) from None
        return net.eval()

    def dataset(self, space, data: str):
        """The run's dataset with the split it was trained on (refused if the data changed). An
        ImageFolder's file headers were checked when the run was trained: not read again here."""
        from nas.data import check_split, load_dataset

        dataset = load_dataset(data, space.image_size, space.in_chans, check_images=False)
        check_split(dataset, self.path(SPLIT))
        return dataset

    def table(self, space, expect=None):
        from nas.latency.table import LatencyTable

        if not self.has(TABLE):
            raise NasError(
                f"{self.path(TABLE)} does not exist; build it with nas latency --space ... --out {self.path(TABLE)}"
            )
        return LatencyTable.load(self.path(TABLE), space, expect=expect)

    def budget(self) -> float | None:
        """The budget the run resolved (manifest), if any."""
        if not self.has(MANIFEST):
            return None
        return self.manifest_data().get("settings", {}).get("budget_ms_resolved")

    def verified(self) -> dict[int, dict]:
        """trial -> its verification ({verified_accuracy, verified_epochs, ...}), from verify.json; {} without one."""
        if not self.has(VERIFY_JSON):
            return {}
        try:
            rows = json.loads(self.path(VERIFY_JSON).read_text())["candidates"]
            return {int(r["trial"]): r for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NasError(
                f"{self.path(VERIFY_JSON)}: not a verification record ({type(error).__name__}); the file is damaged; "
                f"delete it and run nas verify --run {self.root} again"
            ) from None

    def manifest_data(self) -> dict:
        try:
            data = json.loads(self.path(MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise NasError(f"{self.path(MANIFEST)}: cannot read the run's manifest ({error})") from None
        if not isinstance(data, dict):
            raise NasError(f"{self.path(MANIFEST)}: not a run manifest (a JSON {type(data).__name__}, not an object)")
        for name in ("settings", "stages"):
            if name in data and not isinstance(data[name], dict):
                raise NasError(f"{self.path(MANIFEST)}: field '{name}' must be an object; the manifest is damaged")
        if "result" in data and data["result"] is not None and not isinstance(data["result"], dict):
            raise NasError(f"{self.path(MANIFEST)}: field 'result' must be an object or null; the manifest is damaged")
        return data

    def write_run_config(self, config) -> None:
        """run.yaml: the settings as given, replayable with --config; a storage URL with a password is left
        out (NAS_STORAGE_URL supplies it again)."""
        from dataclasses import replace

        from nas.settings import dump
        from nas.storage import redact

        if config.storage and redact(config.storage) != config.storage:
            config = replace(config, storage=None)
        write_text(self.path(RUN_CONFIG), dump(config))

    def study_name(self, explicit: str | None = None) -> str:
        """The name of the run's Optuna study: `explicit` (--study-name); else the name manifest.json
        records (nas run resolves and records it); else the only study of the run's own study.db (a
        `nas search --study-name` run, or a run made before --study-name, whose study is 'nas-search');
        else the run directory's name."""
        from nas.storage import check_study_name, sqlite_study_names

        if explicit is not None:
            return check_study_name(explicit)
        if self.has(MANIFEST):
            recorded = self.manifest_data().get("settings", {}).get("study_name")
            if isinstance(recorded, str) and recorded:
                return recorded
        if self.has(STUDY):
            names = sqlite_study_names(self.default_storage())
            if len(names) == 1:
                return names[0]
        return self.root.resolve().name

    def default_storage(self) -> str:
        return f"sqlite:///{self.root.resolve() / STUDY}"

    def owns_storage(self, storage: str) -> bool:
        """Whether `storage` holds this run's own study: study.db in the run, or the storage that
        manifest.json records (compared without passwords)."""
        from nas.storage import redact

        if storage == self.default_storage():
            return True
        recorded = self.manifest_data().get("settings", {}).get("storage") if self.has(MANIFEST) else None
        return recorded is not None and recorded == redact(storage)

    def report_dir(self, storage: str, report_dir: Path | None) -> Path:
        """Where a study's trials.csv and pareto.* go: the run for its own study; elsewhere only when named."""
        from nas.storage import redact

        if report_dir is not None:
            return Path(report_dir)
        if self.owns_storage(storage):
            return self.root
        raise NasError(
            f"--storage {redact(storage)} is not this run's own study, so its trials.csv and pareto.* would replace "
            f"the run's: pass --report-dir DIR for them (--report-dir {self.root} to make them the run's)"
        )


class Manifest:
    """manifest.json, rewritten (atomically) whenever a stage starts or ends."""

    def __init__(self, run: RunDir, settings: dict) -> None:
        self.path = run.path(MANIFEST)
        previous = run.manifest_data() if run.has(MANIFEST) else {}
        self.data = {
            "created": previous.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
            "versions": versions(),
            "settings": settings,
            "fingerprint": previous.get("fingerprint"),
            "stages": previous.get("stages", {}),
            "result": previous.get("result"),
        }

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("completed"))

    def record(self, stage: str, seconds: float, completed: bool, **extra) -> None:
        entry = self.data["stages"].get(stage, {"seconds": 0.0})
        entry.update(seconds=round(entry.get("seconds", 0.0) + seconds, 2), completed=completed, **extra)
        self.data["stages"][stage] = entry
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)
