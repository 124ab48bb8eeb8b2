"""Image embeddings with a DINOv2 (or any transformers / TorchScript) model, written in resumable Arrow shards.

:func:`embed_images` runs the model over an :class:`~curation.inputs.ImageSet` in batches (bf16 autocast
on CPUs that support it), and writes every ``shard_size`` input rows as one Arrow file
``shards/shard-00000.arrow`` with columns ``row`` (input row) and ``embedding``
(``fixed_size_list<float16|float32>[d]``). A shard is written to a temporary name and renamed when
complete, so a killed run leaves only whole shards behind, and the next call computes only the missing
ones. Images that cannot be decoded are listed with the reason in ``shard-00000.failures.json`` (written
before the shard is renamed) and never get an embedding. So are images whose embedding has no direction,
which cosine similarity cannot compare: an all-zero embedding (a blank, uniform image under ``pixels:N``)
or one with NaN or inf. Each failure has a ``kind`` (:data:`FAILURE_KINDS`) and a ``reason``. On resume,
leftover ``*.tmp`` files are deleted, and every shard on disk is checked (readable, embeddings + failures
= its input rows); a damaged one is computed again.

The directory also holds ``embedding_meta.json``: the model, pooling, preprocessing, storage dtype and a
fingerprint of the input (which images, in which order). Resuming with different settings raises an error
instead of mixing embeddings from two models.

An image can change while its path stays the same, so every shard also records what its rows were made
from, in ``shard-00000.inputs.json``: a hash of each row's image bytes (images held in a dataset) or of its
file's path, size and modification time (image files, which are not read again just to check). On resume a
shard whose inputs changed is embedded again; the others are reused, and the result counts both.

Pooling: ``"cls"`` is ``pooler_output`` (the final-normed CLS token, what DINOv2's k-NN evaluation
uses), ``"mean"`` the mean of the normed patch tokens, ``"cls+mean"`` their concatenation (DINOv2's
linear-probe feature).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from modeling_dinov2.preprocessing import EVAL_CROP, EVAL_RESIZE, IMAGENET_MEAN, IMAGENET_STD, default_resize_size

from .distributed import Processes
from .inputs import ImageSet
from .store import ArrowEmbeddings

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "cls+mean")
STORAGE_DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "bfloat16", "float16", "float32")
META_FILE = "embedding_meta.json"
#: Kinds of failure: the image cannot be decoded, or its embedding is all zeros / not finite.
UNDECODABLE, ZERO_EMBEDDING, NON_FINITE_EMBEDDING = "undecodable", "zero_embedding", "non_finite_embedding"
FAILURE_KINDS = (UNDECODABLE, ZERO_EMBEDDING, NON_FINITE_EMBEDDING)
_UNUSABLE_REASONS = {
    ZERO_EMBEDDING: "blank image (zero embedding): a uniform image has no direction to compare",
    NON_FINITE_EMBEDDING: "the embedding holds NaN or inf (try precision float32)",
}
SHARD_DIR = "shards"


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize`` (bicubic, antialiased), centre-crop ``crop``, normalise."""

    resize: int = EVAL_RESIZE
    crop: int = EVAL_CROP
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @classmethod
    def for_image_size(cls, image_size: int, **kwargs) -> "Preprocessing":
        """DINOv2's 256/224 ratio at another crop size."""
        return cls(resize=default_resize_size(image_size), crop=int(image_size), **kwargs)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> Optional["Preprocessing"]:
        """Read ``preprocessor_config.json`` of a checkpoint folder (``None`` when there is none)."""
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            return None
        cfg = json.loads(file.read_text())
        size = cfg.get("size", {})
        resize = size.get("shortest_edge") or size.get("height") or EVAL_RESIZE
        crop_size = cfg.get("crop_size", {}) if cfg.get("do_center_crop", True) else {}
        crop = crop_size.get("height") or resize
        return cls(int(resize), int(crop), tuple(cfg.get("image_mean", IMAGENET_MEAN)),
                   tuple(cfg.get("image_std", IMAGENET_STD)))

    def transform(self):
        from modeling_dinov2.preprocessing import eval_transform

        return eval_transform(self.crop, self.resize, mean=self.mean, std=self.std)


class LoadedModel(NamedTuple):
    """A model ready to embed: the module, a name for the metadata, its preprocessing and patch size."""

    module: Any
    name: str
    preprocessing: Preprocessing
    patch_size: Optional[int]
    num_prefix_tokens: int


def _weights_fingerprint(module) -> str:
    """A short hash of the weights, so that resuming with other weights is caught."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        values = tensor.detach().cpu()
        values = values.float() if values.dtype == torch.bfloat16 else values
        digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model(model: Any, *, image_size: Optional[int] = None) -> LoadedModel:
    """Load the embedding model.

    Args:
        model: ``"pixels"`` / ``"pixels:N"`` (grey N x N thumbnails, :mod:`curation.pixels`), a checkpoint
            folder or Hub id of a ``modeling_dinov2`` or stock transformers model
            (``AutoModel.from_pretrained``), a TorchScript file (``.pt``/``.torchscript``, e.g. an SSCD
            copy-detection model, which must map ``(B, 3, H, W)`` to ``(B, D)``), or a ``torch.nn.Module``
            returning either a tensor or a transformers output with ``pooler_output``.
        image_size: crop size; default the checkpoint's ``preprocessor_config.json`` or DINOv2's 224.
    """
    import torch

    from modeling_dinov2.loading import load_backbone

    from .pixels import PIXELS, PixelThumbnails, parse_pixels_spec

    preprocessing = None
    side = parse_pixels_spec(model) if isinstance(model, str) else None
    if side is not None:  # no network: pixel thumbnails of the whole image (curation.pixels)
        module = PixelThumbnails(side)
        size = int(image_size or side)
        return LoadedModel(module.eval(), f"{PIXELS}:{side}", Preprocessing(resize=size, crop=size), None, 0)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if os.path.isfile(path) and path.endswith((".pt", ".pth", ".torchscript", ".jit")):
            module = torch.jit.load(path, map_location="cpu")
            name = f"torchscript:{os.path.abspath(path)}"
        else:
            module = load_backbone(path)
            name = path if not os.path.isdir(path) else os.path.abspath(path)
            if os.path.isdir(path):
                preprocessing = Preprocessing.from_pretrained(path)
        name = f"{name}@{_weights_fingerprint(module)}"
    elif isinstance(model, torch.nn.Module):
        module = model
        name = f"{type(model).__name__}@{_weights_fingerprint(model)}"
    else:
        raise TypeError(f"model must be a checkpoint path, a Hub id, a TorchScript file or a torch.nn.Module; "
                        f"received {type(model).__name__}.")
    config = getattr(module, "config", None)
    patch_size = getattr(config, "patch_size", None)
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0) if config is not None else 1
    if image_size is not None:
        preprocessing = Preprocessing.for_image_size(int(image_size))
    preprocessing = preprocessing or Preprocessing()
    if patch_size and preprocessing.crop % int(patch_size):
        raise ValueError(f"image_size/crop {preprocessing.crop} must be a multiple of the model's patch size {patch_size}.")
    return LoadedModel(module.eval(), name, preprocessing, patch_size, prefix)


def load_model_setting(model: Any, setting: str, *, image_size: Optional[int] = None) -> LoadedModel:
    """:func:`load_model`, with any failure to load reported as a bad value of ``setting`` (one line)."""
    from .checks import MODEL, SettingError

    if isinstance(model, LoadedModel):
        return model
    try:
        return load_model(model, image_size=image_size)
    except (OSError, ValueError, TypeError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise SettingError(f"{setting}: cannot load {model!r} ({lines[0].rstrip('.')}); it must be "
                           f"{MODEL.description}.") from err


def pool_output(output: Any, pooling: str, num_prefix_tokens: int):
    """Image features from a model output: a tensor is used as it is; otherwise CLS / mean of patches."""
    import torch

    if isinstance(output, torch.Tensor):
        if output.ndim != 2:
            raise ValueError(f"a model that returns a tensor must return (B, D); received shape {tuple(output.shape)}.")
        return output
    cls = getattr(output, "pooler_output", None)
    patches = getattr(output, "patch_tokens", None)
    if patches is None and getattr(output, "last_hidden_state", None) is not None:
        patches = output.last_hidden_state[:, num_prefix_tokens:]
    if cls is None and getattr(output, "last_hidden_state", None) is not None:
        cls = output.last_hidden_state[:, 0]
    if pooling == "cls":
        return cls
    if pooling == "mean":
        return patches.mean(dim=1)
    return torch.cat([cls, patches.mean(dim=1)], dim=1)


def resolve_device_and_precision(device: str, precision: str) -> tuple[str, Optional[Any]]:
    """``("cpu" | "cuda[:N]", autocast dtype or None)``; ``auto`` picks CUDA when present and bf16 when fast."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; received {precision!r}.")
    if device == "auto":
        from modeling_dinov2.hardware import default_device

        device = default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device.")
    if precision == "float32":
        return device, None
    if precision == "auto":
        if device.startswith("cuda"):
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        from modeling_dinov2.hardware import cpu_supports_bf16

        return device, torch.bfloat16 if cpu_supports_bf16() else None
    return device, getattr(torch, precision)


@dataclass
class EmbeddingSettings:
    """What an embedding directory was made with (written to ``embedding_meta.json``)."""

    model: str
    pooling: str
    storage_dtype: str
    preprocessing: dict
    n_rows: int
    shard_size: int
    input_fingerprint: str
    dim: Optional[int] = None


class EmbeddingResult(NamedTuple):
    """Embeddings of one image set.

    Attributes:
        embeddings: :class:`~curation.store.ArrowEmbeddings` over the decodable rows, in input order.
        rows: ``(M,)`` int64 input row of each embedding.
        failures: one dict per input row without an embedding: ``row``, ``source``, ``kind`` (one of
            :data:`FAILURE_KINDS`) and ``reason``.
        n_total: rows of the input.
        settings: the :class:`EmbeddingSettings`.
        shards_computed: shards computed by this call (the others were already on disk).
        directory: the embedding directory.
        embeddings_computed: embeddings computed by this call.
        embeddings_reused: embeddings reused from shards already on disk (their inputs had not changed).
    """

    embeddings: ArrowEmbeddings
    rows: np.ndarray
    failures: list
    n_total: int
    settings: EmbeddingSettings
    shards_computed: int
    directory: str
    embeddings_computed: int = 0
    embeddings_reused: int = 0

    def to_dataset(self):
        """The embeddings as one memory-mapped ``datasets.Dataset`` (columns ``row``, ``embedding``)."""
        from datasets import Dataset, concatenate_datasets

        return concatenate_datasets([Dataset.from_file(p) for p in self.embeddings.paths])


def _input_fingerprint(image_set: ImageSet) -> str:
    fingerprint = getattr(image_set.dataset, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    return hashlib.sha256(str(len(image_set)).encode()).hexdigest()[:16]  # pragma: no cover


def failure_kind(failure: dict) -> str:
    """The kind of a failure record (records written before kinds existed are undecodable images)."""
    return failure.get("kind", UNDECODABLE)


def _unusable(vectors: np.ndarray) -> list:
    """Per row: ``None`` when the embedding can be normalised, else its failure kind (zero or non-finite)."""
    finite = np.isfinite(vectors).all(axis=1)
    nonzero = (vectors != 0).any(axis=1)
    return [None if ok and nz else (ZERO_EMBEDDING if ok else NON_FINITE_EMBEDDING) for ok, nz in zip(finite, nonzero)]


def _shard_inputs_fingerprints(image_set: ImageSet, n_shards: int, shard_size: int, chunk: int = 256) -> list:
    """Per shard, a hash of what its rows are embedded from: the image bytes, or the file's path, size and mtime."""
    view = image_set.dataset.select_columns([image_set.image_column]).with_format("arrow")
    n = len(image_set)
    fingerprints = []
    for shard in range(n_shards):
        digest = hashlib.blake2b(digest_size=16)
        for start in range(shard * shard_size, min(n, (shard + 1) * shard_size), chunk):
            stop = min(n, (shard + 1) * shard_size, start + chunk)
            images = view[start:stop].column(image_set.image_column).combine_chunks()
            for data, path in zip(images.field("bytes").to_pylist(), images.field("path").to_pylist()):
                if data is not None:
                    digest.update(b"bytes %d:" % len(data) + data)
                else:
                    digest.update(f"file {path}:{_file_state(path)};".encode("utf-8", "surrogateescape"))
        fingerprints.append(digest.hexdigest())
    return fingerprints


def _file_state(path: Optional[str]) -> str:
    """``size:mtime_ns`` of a file, or why there is none (a file that appears later changes the fingerprint)."""
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError) as err:
        return type(err).__name__
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _shard_path(directory: Path, shard: int) -> Path:
    return directory / SHARD_DIR / f"shard-{shard:05d}.arrow"


def _inputs_path(directory: Path, shard: int) -> Path:
    return directory / SHARD_DIR / f"shard-{shard:05d}.inputs.json"


def _recorded_inputs(directory: Path, shard: int) -> Optional[str]:
    """The input fingerprint recorded with a shard (``None`` if there is none, e.g. written by an older version)."""
    try:
        return json.loads(_inputs_path(directory, shard).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _failures_path(directory: Path, shard: int) -> Path:
    return directory / SHARD_DIR / f"shard-{shard:05d}.failures.json"


class _DecodedImages:
    """torch Dataset over input rows: ``(row, pixel tensor or None, error or None)``."""

    def __init__(self, image_set: ImageSet, transform):
        self.dataset = image_set.dataset
        self.column = image_set.image_column
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        from modeling_dinov2.image_decoding import decode_image  # the package imports transformers: only when embedding

        try:
            image = decode_image(self.dataset[int(row)][self.column])
            return int(row), self.transform(image), None
        except Exception as err:  # noqa: BLE001 - any decoding problem is recorded, not raised
            return int(row), None, f"{type(err).__name__}: {err}"


class _ShardBatches:
    """Batches of input rows for the given shards; a batch never crosses a shard boundary."""

    def __init__(self, shards: list, n: int, shard_size: int, batch_size: int):
        self.shards, self.n, self.shard_size, self.batch_size = shards, n, shard_size, batch_size

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size)

    def __iter__(self):
        for shard in self.shards:
            lo, hi = self._bounds(shard)
            for start in range(lo, hi, self.batch_size):
                yield list(range(start, min(hi, start + self.batch_size)))

    def __len__(self) -> int:
        return sum(-(-(hi - lo) // self.batch_size) for lo, hi in map(self._bounds, self.shards))


def _collate(items):
    return items


def _replace_durably(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``final`` (atomic on POSIX file systems)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _write_json_durably(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload))
    _replace_durably(tmp, path)


def _write_shard(directory: Path, shard: int, rows: list, vectors: np.ndarray, failures: list, storage_dtype: str,
                 inputs_fingerprint: str) -> None:
    """Write one shard atomically: failures and input fingerprint first, then the Arrow file, each under a
    temporary name, then renamed.

    The Arrow file is renamed last, so its presence means that the shard and its records are complete.
    """
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    dim = vectors.shape[1]
    _write_json_durably(_failures_path(directory, shard), failures)
    _write_json_durably(_inputs_path(directory, shard), {"fingerprint": inputs_fingerprint})
    final = _shard_path(directory, shard)
    tmp = final.with_suffix(".arrow.tmp")
    features = Features({"row": Value("int64"), "embedding": List(Value(storage_dtype), length=dim)})
    writer = ArrowWriter(features=features, path=str(tmp))
    writer.write_batch({"row": np.asarray(rows, dtype=np.int64), "embedding": vectors.astype(storage_dtype)})
    writer.finalize()
    writer.close()
    _replace_durably(tmp, final)


def _shard_problem(directory: Path, shard: int, expected_rows: int) -> Optional[str]:
    """``None`` when shard ``shard`` on disk is whole (readable, embeddings + failures = its rows), else what is wrong.

    Reads only the Arrow metadata of the memory-mapped file, so checking every shard on resume is cheap.
    """
    import pyarrow as pa

    try:
        n_failures = len(json.loads(_failures_path(directory, shard).read_text()))
        with pa.memory_map(str(_shard_path(directory, shard))) as source:
            n_embedded = sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    except (OSError, ValueError, pa.ArrowException) as err:  # json.JSONDecodeError is a ValueError
        return f"{type(err).__name__}: {err}"
    if n_embedded + n_failures != expected_rows:
        return f"{n_embedded} embeddings + {n_failures} failures for {expected_rows} input rows"
    return None


def _prepare_directory(directory: Path, settings: EmbeddingSettings, inputs: list, overwrite: bool) -> None:
    """Make ``directory`` hold only shards that are valid for ``settings`` and ``inputs`` (one input fingerprint
    per shard): refuse embeddings made with other settings unless ``overwrite``, delete half-written, damaged
    and changed shards, and write the settings file (its ``dim`` kept from before when the settings match)."""
    (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    meta_file = directory / META_FILE
    if meta_file.exists():
        old = json.loads(meta_file.read_text())
        new = json.loads(json.dumps(asdict(settings)))  # tuples -> lists, as read back
        changed = sorted(k for k in new if k != "dim" and old.get(k) != new[k])
        if changed and not overwrite:
            raise ValueError(
                f"{directory} holds embeddings made with other settings (different {', '.join(changed)}). Pass "
                "--overwrite true (in Python: overwrite=True) to replace them, or choose another output directory."
            )
        if changed:
            for file in (directory / SHARD_DIR).iterdir():
                file.unlink()
        else:
            settings.dim = old.get("dim")
    for stale in (directory / SHARD_DIR).glob("*.tmp"):  # left by a run killed while writing
        stale.unlink()
    n, shard_size = settings.n_rows, settings.shard_size
    for s in range(len(inputs)):
        if _shard_path(directory, s).exists():
            problem = _shard_problem(directory, s, min(shard_size, n - s * shard_size))
            if problem is None and _recorded_inputs(directory, s) == inputs[s]:
                continue
            if problem is None:
                logger.info("%s: the input images of shard %d changed since it was embedded; embedding it again",
                            directory, s)
            else:
                logger.warning("%s: shard %d is damaged (%s); computing it again", directory, s, problem)
            _shard_path(directory, s).unlink()
    meta_file.write_text(json.dumps(asdict(settings), indent=2))


def embed_images(
    image_set: ImageSet,
    model: Any,
    output_dir: Union[str, os.PathLike],
    *,
    batch_size: int = 32,
    shard_size: int = 4096,
    pooling: str = "cls",
    storage_dtype: str = "float16",
    precision: str = "auto",
    image_size: Optional[int] = None,
    device: str = "auto",
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    processes: Optional[Processes] = None,
) -> EmbeddingResult:
    """Embed every image of ``image_set`` into ``output_dir``, resuming from the shards already there.

    Args:
        image_set: the images (:func:`~curation.inputs.load_image_set`).
        model: checkpoint path / Hub id / TorchScript file / module, or a :class:`LoadedModel`.
        output_dir: embedding directory (created).
        batch_size: images per forward pass.
        shard_size: input rows per Arrow shard (the unit of resumption).
        pooling: ``"cls"``, ``"mean"`` or ``"cls+mean"`` (see module docstring).
        storage_dtype: ``"float16"`` (half the disk) or ``"float32"``.
        precision: autocast dtype: ``"auto"`` (bf16 on CPUs with bf16 instructions, bf16/fp16 on CUDA),
            ``"bfloat16"``, ``"float16"`` or ``"float32"`` (no autocast).
        image_size: crop size (default: the checkpoint's preprocessing, else 224).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: DataLoader workers decoding images.
        overwrite: replace the embeddings of ``output_dir`` made with other settings (or other inputs)
            instead of raising. Shards made with these settings are reused either way, unless their inputs
            changed.
        progress: tqdm bar over images.
        processes: this process's rank among N that embed together (:mod:`curation.distributed`; default: the
            launch's, one process without torchrun): rank 0 checks the settings and the existing shards, each
            rank computes every N-th missing shard, and all return when every shard is written.
    """
    import torch

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; received {pooling!r}.")
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}; received {storage_dtype!r}.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1; received {batch_size} and {shard_size}.")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, image_size=image_size)
    processes = processes or Processes.from_environment()
    device, autocast_dtype = resolve_device_and_precision(device, precision)
    if device == "cuda" and processes.world_size > 1:
        device = f"cuda:{processes.local_rank}"  # one GPU per rank of the node
    directory = Path(output_dir)
    n = len(image_set)
    settings = EmbeddingSettings(
        model=loaded.name, pooling=pooling, storage_dtype=storage_dtype,
        preprocessing=asdict(loaded.preprocessing), n_rows=n, shard_size=int(shard_size),
        input_fingerprint=_input_fingerprint(image_set),
    )
    n_shards = (n + shard_size - 1) // shard_size
    inputs = _shard_inputs_fingerprints(image_set, n_shards, shard_size)
    error = None
    if processes.is_main:  # the others wait: rank 0 alone decides which shards are still to compute
        try:
            _prepare_directory(directory, settings, inputs, overwrite)
        except (OSError, ValueError) as err:
            error = err
    processes.stop_if_any_failed(error)
    settings.dim = json.loads((directory / META_FILE).read_text()).get("dim")
    todo = [s for s in range(n_shards) if not _shard_path(directory, s).exists()]
    mine = processes.share(todo)
    if todo and len(todo) < n_shards and processes.is_main:
        logger.info("%s: resuming, %d of %d shards are done", directory, n_shards - len(todo), n_shards)
    if processes.world_size > 1 and processes.is_main:
        logger.info("%s: %d shards to compute over %d processes", directory, len(todo), processes.world_size)

    module = loaded.module.to(device)
    transform = loaded.preprocessing.transform()
    loader = torch.utils.data.DataLoader(_DecodedImages(image_set, transform),
                                         batch_sampler=_ShardBatches(mine, n, shard_size, batch_size),
                                         num_workers=num_workers, collate_fn=_collate)
    my_rows = sum(min(shard_size, n - s * shard_size) for s in mine)
    done_rows = n - sum(min(shard_size, n - s * shard_size) for s in todo)
    what = f"embedding {image_set.name}" + (f" (rank {processes.rank})" if processes.world_size > 1 else "")
    bar = tqdm(total=done_rows + my_rows, initial=done_rows, desc=what, unit="img", disable=not progress)
    pending: dict[int, dict] = {}
    dim = settings.dim
    for items in loader:
        shard = items[0][0] // shard_size
        entry = pending.setdefault(shard, {"rows": [], "vectors": [], "failures": [], "seen": 0})
        ok = [(row, pixels) for row, pixels, err in items if err is None]
        for row, _, err in items:
            if err is not None:
                entry["failures"].append({"row": row, "source": image_set.source_of(row), "kind": UNDECODABLE,
                                          "reason": err})
        if ok:
            pixels = torch.stack([p for _, p in ok]).to(device)
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=autocast_dtype or torch.float32,
                                                 enabled=autocast_dtype is not None):
                features = pool_output(module(pixels), pooling, loaded.num_prefix_tokens)
            vectors = features.float().cpu().numpy().astype(storage_dtype)  # checked as they will be stored
            dim = vectors.shape[1]
            kinds = _unusable(vectors)
            for (row, _), kind in zip(ok, kinds):
                if kind is not None:
                    entry["failures"].append({"row": row, "source": image_set.source_of(row), "kind": kind,
                                              "reason": _UNUSABLE_REASONS[kind]})
            usable = np.array([kind is None for kind in kinds])
            entry["rows"].extend(row for (row, _), good in zip(ok, usable) if good)
            entry["vectors"].append(vectors[usable])
        entry["seen"] += len(items)
        bar.update(len(items))
        if entry["seen"] == min(shard_size, n - shard * shard_size):
            if dim is None:  # a shard where nothing decodes, before any embedding was seen
                dim = _probe_dim(module, loaded, pooling, device)
            vectors = np.concatenate(entry["vectors"]) if entry["vectors"] else np.empty((0, dim), np.float32)
            failures = sorted(entry["failures"], key=lambda f: f["row"])
            _write_shard(directory, shard, entry["rows"], vectors, failures, storage_dtype, inputs[shard])
            del pending[shard]
    bar.close()
    if processes.world_size > 1:
        logger.info("%s: rank %d embedded shards %s", directory, processes.rank, mine)
    dims = [d for d in processes.gather(None if dim is None else int(dim)) if d is not None]  # waits for every rank
    if processes.is_main and dims and settings.dim != dims[0]:
        settings.dim = dims[0]
        (directory / META_FILE).write_text(json.dumps(asdict(settings), indent=2))
    processes.barrier()  # the meta file is final
    result = load_embeddings(directory)
    for what, kinds in (("cannot be decoded", (UNDECODABLE,)),
                        ("have an embedding without a direction", (ZERO_EMBEDDING, NON_FINITE_EMBEDDING))):
        failures = [f for f in result.failures if failure_kind(f) in kinds]
        if failures:
            logger.warning("%s: %d of %d images %s and are skipped (e.g. %s: %s)", image_set.name, len(failures), n,
                           what, failures[0]["source"], failures[0]["reason"])
    computed = int(np.isin(result.rows // shard_size, todo).sum())
    reused = int(result.rows.size) - computed
    logger.info("%s: %d embeddings computed, %d reused from earlier shards", directory, computed, reused)
    return result._replace(shards_computed=len(todo), embeddings_computed=computed, embeddings_reused=reused)


def _probe_dim(module, loaded: LoadedModel, pooling: str, device: str) -> int:
    import torch

    crop = loaded.preprocessing.crop
    with torch.no_grad():
        return int(pool_output(module(torch.zeros(1, 3, crop, crop, device=device)), pooling,
                               loaded.num_prefix_tokens).shape[1])


def load_embeddings(output_dir: Union[str, os.PathLike]) -> EmbeddingResult:
    """Open a complete embedding directory written by :func:`embed_images`.

    Raises:
        ValueError: if shards are missing (the run has not finished: call ``embed_images`` again).
    """
    directory = Path(output_dir)
    meta_file = directory / META_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{directory} is not an embedding directory (no {META_FILE}).")
    meta = json.loads(meta_file.read_text())
    settings = EmbeddingSettings(**meta)
    n_shards = (settings.n_rows + settings.shard_size - 1) // settings.shard_size
    missing = [s for s in range(n_shards) if not _shard_path(directory, s).exists()]
    if missing:
        raise ValueError(f"{directory} is incomplete: {len(missing)} of {n_shards} shards are missing (first "
                         f"{missing[:5]}); run the embedding step again to resume.")
    paths = [_shard_path(directory, s) for s in range(n_shards)]
    store = ArrowEmbeddings(paths)
    failures = []
    for s in range(n_shards):
        failures.extend(json.loads(_failures_path(directory, s).read_text()))
    rows = store.column_values("row").astype(np.int64)
    if rows.size + len(failures) != settings.n_rows:
        raise ValueError(f"{directory}: {rows.size} embeddings + {len(failures)} failures != {settings.n_rows} input rows.")
    return EmbeddingResult(store, rows, failures, settings.n_rows, settings, 0, str(directory))
