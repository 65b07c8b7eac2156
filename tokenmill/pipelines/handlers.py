"""RunInference ModelHandlers: each model loads once per worker, runs batched, and reports
per-element failures (so one bad segment becomes one dead letter, not a failed batch)."""
from __future__ import annotations

import json

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tokenmill.pipelines.device import device_index
from tokenmill.tokenizers import compute
from tokenmill.pipelines.ingest import SegmentInput
from tokenmill.pipelines.configs import AcousticConfig, SemanticConfig
from tokenmill.schemas import rates
from tokenmill.tokenizers.codec import AcousticCodec, build_codec
from tokenmill.tokenizers.kmeans import Codebook, CodebookError, faiss_has_gpu
from tokenmill.tokenizers.semantic import SemanticExtractor, build_extractor

LOG = logging.getLogger("tokenmill")
CPU_ONLY_EXTRACTORS = ("spectral", "melodic", "basic-pitch")  # no device argument: NumPy/torch on the CPU


@dataclass(frozen=True)
class Failed:
    """Inference result slot for an element that raised; becomes a dead letter downstream."""

    exc: BaseException


def per_element(run_batch, run_one, items: list) -> list:
    """Run a batch; if it raises, run the items one by one so only the failing ones become
    `Failed` (and then dead letters) instead of the whole batch."""
    try:
        return list(run_batch(items))
    except Exception:  # noqa: BLE001 — isolate the failing element
        out = []
        for item in items:
            try:
                out.append(run_one(item))
            except Exception as e:  # noqa: BLE001
                out.append(Failed(e))
        return out


def resolve_codebook_path(path: str, kind: str = "semantic", flag: str = "--codebook") -> str:
    """A .safetensors/.json path, or a directory holding exactly one `<kind>-*.safetensors`."""
    if path.endswith(".json"):
        path = path[: -len(".json")] + ".safetensors"
    if path.endswith(".safetensors"):
        if not FileSystems.exists(path):
            raise FileNotFoundError(f"codebook {path} does not exist; run fit-codebook"
                                    f"{'' if kind == 'semantic' else ' --stream ' + kind} first")
        return path
    found = [m.path for m in FileSystems.match([FileSystems.join(path, f"{kind}-*.safetensors")])[0].metadata_list]
    if len(found) != 1:
        raise FileNotFoundError(
            f"{flag} {path}: expected exactly one {kind}-*.safetensors there, found "
            f"{len(found)} ({', '.join(sorted(found)) or 'none'}); pass the file itself")
    return found[0]


def local_codebook_path(path: str, kind: str = "semantic", flag: str = "--codebook") -> str:
    """Resolve through Beam FileSystems (gs://, s3://, local); remote artifacts (the .safetensors
    and its .json card) are copied to a local temp directory first."""
    path = resolve_codebook_path(path, kind, flag)
    if os.path.exists(path):
        return path
    tmp = tempfile.mkdtemp(prefix="tokenmill-codebook-")
    for src in (path, path[: -len(".safetensors")] + ".json"):
        with FileSystems.open(src) as f, open(os.path.join(tmp, os.path.basename(src)), "wb") as out:
            out.write(f.read())
    return os.path.join(tmp, os.path.basename(path))


def local_model_path(path: str | None, flag: str) -> str | None:
    """A model given as a Beam FileSystems URL (gs://, s3://, ...): a file (MuLan/SoundStream
    weights) or a directory (a transformers save_pretrained checkpoint), copied once per machine
    to <tmp>/tokenmill-models/<sha16 of the URL and its files' sizes and mtimes>/<name> (so a
    replaced remote file is copied again) and that local path returned. Local
    paths are returned unchanged. The models read local files; their manifest entries hash the
    weights' bytes, so where they were read from changes nothing in the output."""
    if path is None or "://" not in path:
        return path
    import hashlib
    import shutil

    url = path.rstrip("/")
    name = url.rsplit("/", 1)[-1]
    if FileSystems.exists(url):
        found = FileSystems.match([url])[0].metadata_list
        files = [(url, name)]
    else:
        found = sorted(FileSystems.match([url + "/**"])[0].metadata_list, key=lambda m: m.path)
        files = [(m.path, os.path.join(name, m.path[len(url) + 1:])) for m in found]
    if not files:
        raise FileNotFoundError(f"{flag} {path}: no file, and no files under it as a directory (read "
                                "through Beam FileSystems: check the URL, and that this machine has the "
                                "filesystem's package and credentials, e.g. apache-beam[gcp] for gs://)")
    stamp = "\n".join([url] + [f"{m.path}\t{m.size_in_bytes}\t{m.last_updated_in_seconds}" for m in found])
    root = os.path.join(tempfile.gettempdir(), "tokenmill-models", hashlib.sha256(stamp.encode()).hexdigest()[:16])
    dest = os.path.join(root, name)
    if os.path.exists(dest):
        return dest
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=root)
    for src, rel in files:
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with FileSystems.open(src) as f, open(os.path.join(tmp, rel), "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
    try:
        os.rename(os.path.join(tmp, name), dest)  # atomic: a concurrent copy by another process wins or loses whole
    except OSError:
        if not os.path.exists(dest):
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def with_local_path(kwargs: dict, flag: str) -> dict:
    """Model kwargs with a remote `path` (see local_model_path) replaced by its local copy."""
    if kwargs.get("path") is None:
        return kwargs
    return {**kwargs, "path": local_model_path(str(kwargs["path"]), flag)}


def semantic_extractor(cfg: SemanticConfig, device: str = "cpu") -> SemanticExtractor:
    """The extractor on `device` (the handlers pass cfg.device on the worker; the launcher's
    describe and rebuild use the CPU). The spectral extractor has no device: it runs on the CPU."""
    kw = with_local_path(cfg.extractor_kwargs(), "--semantic_path")
    if cfg.extractor not in CPU_ONLY_EXTRACTORS:
        kw["device"] = device
    return build_extractor(cfg.extractor, **kw)


def worker_semantic_extractor(cfg: SemanticConfig) -> SemanticExtractor:
    """load_model's extractor: on cfg.device, with a warning when that cannot apply (spectral),
    under the job's compute layout (threads, kernels) in this worker process."""
    compute.apply(cfg.compute, cfg.device)
    if cfg.device != "cpu" and cfg.extractor in CPU_ONLY_EXTRACTORS:
        LOG.warning("--device %s: %s extractor has no GPU path; it runs on CPU", cfg.device, cfg.extractor)
    return semantic_extractor(cfg, device=cfg.device)


def acoustic_codec(cfg: AcousticConfig, device: str = "cpu") -> AcousticCodec:
    """The codec on `device` (AcousticTokenHandler passes cfg.device; describe_acoustic the CPU)."""
    return build_codec(cfg.codec, device=device, **with_local_path(cfg.codec_kwargs(), "--acoustic_model"))


def load_codebook(path: str) -> Codebook:
    """The semantic codebook at `path` (see local_codebook_path)."""
    return Codebook.load(local_codebook_path(path))


class _SemanticBase(ModelHandler):
    def __init__(self, cfg: SemanticConfig):
        super().__init__(min_batch_size=1, max_batch_size=cfg.batch_size)
        self.cfg = cfg

    def _extract(self, extractor: SemanticExtractor, batch: Sequence[SegmentInput]) -> list[Any]:
        waves = [s.waves[rates.SEMANTIC.sample_rate_hz] for s in batch]
        return per_element(extractor.extract_batch, extractor.extract, waves)

    def get_num_bytes(self, batch: Sequence[SegmentInput]) -> int:
        return sum(w.nbytes for s in batch for w in s.waves.values())


class SemanticFeatureHandler(_SemanticBase):
    """SegmentInput → float32 [T_s, D] features (for the codebook fit)."""

    def load_model(self) -> SemanticExtractor:
        return worker_semantic_extractor(self.cfg)

    def run_inference(self, batch, model, inference_args=None) -> Iterable[PredictionResult]:
        return [PredictionResult(s, f) for s, f in zip(batch, self._extract(model, batch))]

    def get_metrics_namespace(self) -> str:
        return "tokenmill_semantic_features"


@dataclass
class SemanticTokenizer:
    extractor: SemanticExtractor
    codebook: Codebook


class SemanticTokenHandler(_SemanticBase):
    """SegmentInput → uint16 [T_s] codes: features, then nearest centroid (FAISS)."""

    def __init__(self, cfg: SemanticConfig, codebook_path: str):
        super().__init__(cfg)
        self.codebook_path = codebook_path

    def load_model(self) -> SemanticTokenizer:
        extractor = worker_semantic_extractor(self.cfg)
        codebook = load_codebook(self.codebook_path)
        check_codebook_matches(extractor.describe(), codebook)
        return SemanticTokenizer(extractor, codebook_on_device(codebook, self.cfg.device))

    def run_inference(self, batch, model: SemanticTokenizer, inference_args=None):
        out = []
        for s, feats in zip(batch, self._extract(model.extractor, batch)):
            if not isinstance(feats, Failed):
                try:
                    expected = rates.frames_for_quanta(s.n_quanta, rates.SEMANTIC)
                    if feats.shape[0] != expected:
                        raise ValueError(f"extractor gave {feats.shape[0]} frames, expected {expected}")
                    feats = model.codebook.assign(feats)
                except Exception as e:  # noqa: BLE001
                    feats = Failed(e)
            out.append(PredictionResult(s, feats))
        return out

    def get_metrics_namespace(self) -> str:
        return "tokenmill_semantic_tokens"


def check_codebook_matches(desc: dict, codebook: Codebook) -> None:
    """Refuse a codebook fitted on other features: dim always; extractor name, weights sha256 and
    layer when the card records the fit's extractor (fit-codebook writes it in sources.extractor).
    Any other difference in the extractor's config (basic-pitch's runtime, say) is logged as a
    warning naming the settings: the features may differ in the last bits."""
    if codebook.dim != desc["dim"]:
        raise CodebookError(
            f"codebook {codebook.id} has dim {codebook.dim} but extractor '{desc['name']}' gives "
            f"{desc['dim']}; fit the codebook with the same extractor")
    fit = (codebook.card.get("sources") or {}).get("extractor")
    if not isinstance(fit, dict):
        return
    for field, what in (("name", "extractor"), ("weights_sha256", "model weights"), ("layer", "layer")):
        if fit.get(field) != desc.get(field):
            raise CodebookError(
                f"codebook {codebook.id} was fitted on {what} {fit.get(field)!r} but this job uses "
                f"{desc.get(field)!r}; pass the --semantic_extractor/--semantic_path/--semantic_layer the "
                "codebook was fitted with (its card's sources.extractor), or fit a new codebook")
    # the card holds the config as JSON (tuples became lists); `path` is where the weights were,
    # and their hash, compared above, is what identifies them
    fit_cfg, cfg = fit.get("config"), json.loads(json.dumps(desc.get("config"), default=str))
    if isinstance(fit_cfg, dict) and isinstance(cfg, dict):
        changed = sorted(k for k in set(fit_cfg) | set(cfg) if k != "path" and fit_cfg.get(k) != cfg.get(k))
        if changed:  # e.g. basic-pitch's runtime: features within float32 rounding, not bit-equal
            LOG.warning("codebook %s was fitted on %s features with %s; this job computes them with %s. "
                        "Tokens of frames at a cluster boundary may differ from the fit's; fit a new "
                        "codebook to match exactly", codebook.id, desc.get("name"),
                        ", ".join(f"{k}={fit_cfg.get(k)!r}" for k in changed),
                        ", ".join(f"{k}={cfg.get(k)!r}" for k in changed))


def codebook_on_device(codebook: Codebook, device: str) -> Codebook:
    """The codebook's nearest-centroid search on `device`'s GPU when faiss has GPU support (the
    worker image installs faiss-gpu); with faiss-cpu it stays on the CPU, with a warning (the
    tokens are the same up to near-ties)."""
    if device == "cpu":
        return codebook
    if not faiss_has_gpu():
        LOG.warning("--device %s: this faiss build has no GPU support (faiss-cpu); the semantic codebook "
                    "assignment runs on the CPU. Install faiss-gpu (deploy/Dockerfile) to move it", device)
        return codebook
    return codebook.to_gpu(device_index(device))


def describe_semantic(cfg: SemanticConfig, codebook_path: str) -> dict:
    """Tokenizer entry of the manifest, computed at launch (loads the model once, locally, on the
    CPU whatever cfg.device says: the launcher may have no GPU, and the entry must not depend on it)."""
    extractor = semantic_extractor(cfg)
    codebook = load_codebook(codebook_path)
    check_codebook_matches(extractor.describe(), codebook)
    return {"extractor": extractor.describe(), "codebook_id": codebook.id,
            "vocab_size": int(codebook.centroids.shape[0]), "codebook_card": codebook.card}, codebook


class AcousticTokenHandler(ModelHandler):
    """SegmentInput → uint16 [n_q, T_a] codes from the acoustic codec at its own sample rate."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__(min_batch_size=1, max_batch_size=cfg.batch_size)
        self.cfg = cfg

    def load_model(self) -> AcousticCodec:
        compute.apply(self.cfg.compute, self.cfg.device)  # this worker process: threads, kernels
        return acoustic_codec(self.cfg, device=self.cfg.device)

    def run_inference(self, batch, model: AcousticCodec, inference_args=None):
        waves = [s.waves[model.sample_rate_hz] for s in batch]
        codes = per_element(model.encode_batch, model.encode, waves)
        return [PredictionResult(s, c) for s, c in zip(batch, codes)]

    def get_num_bytes(self, batch) -> int:
        return sum(w.nbytes for s in batch for w in s.waves.values())

    def get_metrics_namespace(self) -> str:
        return "tokenmill_acoustic_tokens"


def describe_acoustic(cfg: AcousticConfig) -> dict:
    """Tokenizer entry of the manifest (builds the codec once at launch, on the CPU whatever
    cfg.device says: rates, depth, hash)."""
    return acoustic_codec(cfg).describe()
