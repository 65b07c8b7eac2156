"""`--device` of tokenize and fit-codebook (pipelines/device.py): parsing, the configs that carry
it, each ModelHandler's load_model building its model on that device (on the worker), the
launcher's describe_* building on the CPU whatever the flag (descriptions unchanged), the spectral
extractor's warning, and the fix-it refusal of CUDA on a local runner of a machine without it.

This machine has no GPU: spies stand in for the model constructors where a CUDA device is asked
for, record the kwargs and build the real model on the CPU."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import beam_runner
from tokenmill import plugins
from tokenmill.errors import UsageError
from tokenmill.pipelines import device as dev
from tokenmill.pipelines import handlers
from tokenmill.pipelines import mulan as pmulan
from tokenmill.pipelines import options as opts
from tokenmill.pipelines.options import AcousticConfig, MulanConfig, SemanticConfig
from tokenmill.tokenizers import semantic
from tokenmill.tokenizers.codec import CodecError
from tokenmill.tokenizers.kmeans import fit_kmeans
from tokenmill.tokenizers.mulan import MulanError
from tokenmill.tokenizers.semantic_ssl import SemanticModelError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REFUSAL = ("--device cuda: CUDA is not available on this machine; run with --device cpu, or on GPU "
           "workers (docs/runners.md)")


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    """A tiny randomly initialised HuBERT (hidden 32, 7 layers) saved with its feature extractor,
    plus a k=8 semantic codebook of its dimension beside it (in another directory)."""
    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=7, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).eval()
    d = tmp_path_factory.mktemp("hubert")
    model.save_pretrained(d)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True).save_pretrained(d)
    cb = tmp_path_factory.mktemp("hubert_cb")
    fit_kmeans(np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32), 8, seed=0,
               kind="semantic").save(cb)
    return d, cb


@pytest.fixture(scope="module")
def spectral_codebook(tmp_path_factory):
    cb = tmp_path_factory.mktemp("spectral_cb")
    dim = semantic.build_extractor("spectral").dim
    fit_kmeans(np.random.default_rng(0).standard_normal((200, dim)).astype(np.float32), 8, seed=0,
               kind="semantic").save(cb)
    return cb


def _spy(monkeypatch, family: str, name: str, force_cpu: bool) -> list[dict]:
    """Replace the plug-in row family/name by a recorder of its kwargs; it builds the real model,
    on the CPU when `force_cpu` (a CUDA request on this GPU-less machine), else exactly as asked."""
    calls: list[dict] = []
    real = plugins.resolve(family, name)

    def spy(**kw):
        calls.append(dict(kw))
        return real(**({**kw, "device": "cpu"} if force_cpu and "device" in kw else kw))

    monkeypatch.setitem(plugins.TABLE[family], name, spy)
    return calls


def _keys(x) -> set[str]:
    """Every dict key in x, nested, except inside codebook cards (read from the codebook file; a
    k-means card records the device of its FAISS fit, not --device)."""
    if isinstance(x, dict):
        return set(x) | {k for n, v in x.items() if n != "codebook_card" for k in _keys(v)}
    if isinstance(x, (list, tuple)):
        return {k for v in x for k in _keys(v)}
    return set()


# ---- parsing -------------------------------------------------------------------------------------

def _parse(command: str, *extra: str):
    base = {"tokenize": ["tokenize", "--input", "a.wav", "--codebook", "cb", "--output", "out"],
            "fit-codebook": ["fit-codebook", "--input", "a.wav", "--output", "out"]}[command]
    args, rest = beam_runner._parser().parse_known_args([*base, *extra])
    assert rest == []
    return args


@pytest.mark.parametrize("command", ["tokenize", "fit-codebook"])
def test_device_defaults_to_cpu(command):
    args = _parse(command)
    assert args.device == "cpu"
    assert opts.semantic_config(args).device == "cpu"


def test_cuda_n_is_accepted_and_reaches_every_config():
    args = _parse("tokenize", "--device", "cuda:1")
    assert args.device == "cuda:1"
    assert opts.semantic_config(args).device == "cuda:1"
    assert opts.acoustic_config(args).device == "cuda:1"
    assert opts.mulan_config(args).device == "cuda:1"
    cfg = opts.tokenize_config(args, 24_000)
    assert (cfg.semantic.device, cfg.acoustic.device, cfg.mulan.device) == ("cuda:1", "cuda:1", "cuda:1")
    assert cfg.to_json()["acoustic"]["device"] == "cuda:1"  # the job record says where it ran
    assert _parse("tokenize", "--device", "CUDA").device == "cuda"


def test_fit_codebook_carries_the_device_for_both_streams():
    assert opts.fit_codebook_config(_parse("fit-codebook", "--device", "cuda")).semantic.device == "cuda"
    cfg = opts.fit_codebook_config(_parse("fit-codebook", "--stream", "mulan", "--device", "cuda:0"))
    assert cfg.mulan.device == "cuda:0"


@pytest.mark.parametrize("junk", ["gpu", "cuda:", "cuda:x", "cuda1", "mps", "cpu:0"])
def test_junk_device_is_refused_with_a_clear_message(junk, capsys):
    with pytest.raises(SystemExit) as e:
        _parse("tokenize", "--device", junk)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --device: invalid device {junk!r}: use cpu, cuda" in err
    assert "cuda:N (GPU N, e.g. cuda:1)" in err


def test_embed_text_configs_stay_on_cpu():
    """embed-text has no --device; mulan_config of its arguments is on the CPU."""
    args, _ = beam_runner._parser().parse_known_args(["embed-text", "x"])
    assert not hasattr(args, "device") and opts.mulan_config(args).device == "cpu"


# ---- load_model (worker) passes the device -------------------------------------------------------

def test_semantic_handlers_build_the_ssl_extractor_on_the_device(monkeypatch, hubert_dir):
    d, cb = hubert_dir
    calls = _spy(monkeypatch, "semantic", "hubert", force_cpu=True)
    cfg = SemanticConfig(extractor="hubert", path=str(d), device="cuda:1")
    ex = handlers.SemanticFeatureHandler(cfg).load_model()
    tok = handlers.SemanticTokenHandler(cfg, str(cb)).load_model()
    assert [c["device"] for c in calls] == ["cuda:1", "cuda:1"]
    assert calls[0]["path"] == str(d) and ex.dim == 32 and tok.codebook.centroids.shape == (8, 32)


def test_acoustic_handler_builds_the_codec_on_the_device(monkeypatch):
    calls = _spy(monkeypatch, "codec", "soundstream", force_cpu=True)
    model = handlers.AcousticTokenHandler(AcousticConfig(codec="soundstream", device="cuda")).load_model()
    assert calls == [{"device": "cuda"}]
    assert model.name == "soundstream" and str(model.device) == "cpu"  # the spy built it here


def test_mulan_handlers_build_the_model_on_the_device(monkeypatch):
    calls = _spy(monkeypatch, "mulan", "mulan", force_cpu=True)
    cfg = MulanConfig(device="cuda:2")
    pmulan.MulanWindowHandler(cfg).load_model()
    tok = pmulan.MulanTokenHandler(cfg).load_model()
    assert [c["device"] for c in calls] == ["cuda:2", "cuda:2"]
    assert calls[0]["batch_size"] == 16 and tok.rvq.dim == tok.model.dim == 128


def test_clap_gets_the_device_too(monkeypatch):
    """build_model passes the device to any MuLan back-end (clap's constructor is spied, not run)."""
    calls = []
    monkeypatch.setitem(plugins.TABLE["mulan"], "clap", lambda **kw: calls.append(kw) or "clap-model")
    assert pmulan.build_model(MulanConfig(model="clap", path="/ckpt", device="cuda"), device="cuda") == "clap-model"
    assert calls == [{"device": "cuda", "batch_size": 16, "path": "/ckpt"}]


def test_worker_without_cuda_gets_the_models_fix_it_errors(monkeypatch, hubert_dir):
    """A CUDA device on a worker that has none: each model's own error, naming the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CodecError, match="soundstream: device 'cuda' asked for but CUDA is not available"):
        handlers.AcousticTokenHandler(AcousticConfig(device="cuda")).load_model()
    with pytest.raises(SemanticModelError, match="hubert: device 'cuda:1' asked for but CUDA is not available"):
        handlers.SemanticFeatureHandler(SemanticConfig(extractor="hubert", path=str(hubert_dir[0]),
                                                       device="cuda:1")).load_model()
    with pytest.raises(MulanError, match="mulan: device 'cuda' is not available here"):
        pmulan.MulanWindowHandler(MulanConfig(device="cuda")).load_model()


# ---- the spectral extractor: CPU only, and says so -------------------------------------------------

def test_spectral_extractor_warns_once_and_runs_on_cpu(caplog, spectral_codebook):
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        ex = handlers.SemanticFeatureHandler(SemanticConfig(extractor="spectral", device="cuda")).load_model()
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert msgs == ["--device cuda: spectral extractor has no GPU path; it runs on CPU"]
    assert ex.name == "spectral"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        tok = handlers.SemanticTokenHandler(SemanticConfig(extractor="spectral", device="cuda:1"), str(spectral_codebook)).load_model()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned[0] == "--device cuda:1: spectral extractor has no GPU path; it runs on CPU"
    assert len(warned) == 2 and "no GPU support (faiss-cpu)" in warned[1]  # the codebook's search
    assert tok.extractor.name == "spectral"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        handlers.SemanticFeatureHandler(SemanticConfig(extractor="spectral")).load_model()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ---- the launcher describes on the CPU -----------------------------------------------------------

def test_describe_acoustic_is_built_on_cpu_and_unchanged_by_the_device(monkeypatch):
    calls = _spy(monkeypatch, "codec", "soundstream", force_cpu=False)  # cuda here would raise
    cpu = handlers.describe_acoustic(AcousticConfig(device="cpu"))
    gpu = handlers.describe_acoustic(AcousticConfig(device="cuda"))
    assert [c["device"] for c in calls] == ["cpu", "cpu"]
    assert cpu == gpu and "device" not in _keys(gpu)
    assert gpu["weights_sha256"] == cpu["weights_sha256"] and gpu["n_q"] == 12


def test_describe_semantic_ssl_is_built_on_cpu_and_unchanged_by_the_device(monkeypatch, hubert_dir):
    d, cb = hubert_dir
    calls = _spy(monkeypatch, "semantic", "hubert", force_cpu=False)
    cpu, _ = handlers.describe_semantic(SemanticConfig(extractor="hubert", path=str(d)), str(cb))
    gpu, _ = handlers.describe_semantic(SemanticConfig(extractor="hubert", path=str(d), device="cuda"), str(cb))
    assert [c["device"] for c in calls] == ["cpu", "cpu"]
    assert cpu == gpu and "device" not in _keys(gpu)  # SSLConfig.device is not in the description
    assert gpu["extractor"]["config"] == {"path": str(d), "layer": 7, "chunk_frames": 750}


def test_describe_semantic_spectral_unchanged_and_silent(caplog, spectral_codebook):
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        cpu, _ = handlers.describe_semantic(SemanticConfig(extractor="spectral"), str(spectral_codebook))
        gpu, _ = handlers.describe_semantic(SemanticConfig(extractor="spectral", device="cuda"), str(spectral_codebook))
    assert cpu == gpu and "device" not in _keys(gpu)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # the worker warns, not the launcher


def test_describe_mulan_and_fit_build_on_cpu_unchanged_by_the_device(monkeypatch):
    calls = _spy(monkeypatch, "mulan", "mulan", force_cpu=False)
    cpu = pmulan.describe_mulan(MulanConfig())
    gpu = pmulan.describe_mulan(MulanConfig(device="cuda"))
    fit_desc = pmulan.build_model(MulanConfig(device="cuda")).describe()  # beam_runner's fit-codebook --stream mulan
    assert [c["device"] for c in calls] == ["cpu", "cpu", "cpu"]
    assert cpu == gpu and "device" not in _keys(gpu)
    assert fit_desc == gpu["model"] and gpu["codebook_id"] == cpu["codebook_id"]


def test_ssl_manifests_written_with_a_device_key_still_match(hubert_dir):
    """Descriptions written before describe() dropped SSLConfig.device hold "device": "cpu";
    --into's comparison ignores it."""
    from tokenmill.pipelines.incremental import _strip

    d, cb = hubert_dir
    desc, _ = handlers.describe_semantic(SemanticConfig(extractor="hubert", path=str(d)), str(cb))
    old = {**desc, "extractor": {**desc["extractor"], "config": {**desc["extractor"]["config"], "device": "cpu"}}}
    assert old != desc and _strip(old) == _strip(desc)


# ---- local runner: refuse CUDA this machine lacks, before the job starts ----------------------------

@pytest.mark.parametrize("beam_args, local", [
    ([], True),
    (["--runner=DirectRunner"], True),
    (["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"], True),
    (["--runner=PortableRunner", "--job_endpoint=embed"], True),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000"], True),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
      "--environment_config=gpu-pool.example:50000"], False),
    (["--runner=PortableRunner", "--job_endpoint=flink-jobserver:8099", "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000"], False),  # localhost of each TaskManager, not this machine
    (["--runner=FlinkRunner", "--environment_type=LOOPBACK"], True),  # workers in this process
    (["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"], False),
    (["--runner=FlinkRunner", "--flink_master=jm:8081", "--environment_type=DOCKER"], False),
    (["--runner=SparkRunner", "--spark_master_url=spark://m:7077"], False),
])
def test_which_runners_run_the_workers_here(beam_args, local):
    assert dev.workers_are_local(beam_args) is local


def test_local_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as e:
        dev.check_local_device("cuda", [])
    assert str(e.value) == REFUSAL
    with pytest.raises(UsageError, match=r"^--device cuda:1: CUDA is not available on this machine"):
        dev.check_local_device("cuda:1", ["--runner=PortableRunner", "--job_endpoint=embed"])
    dev.check_local_device("cpu", [])  # cpu is never checked


def test_remote_runner_is_not_checked_at_launch(monkeypatch):
    def boom():
        raise AssertionError("torch.cuda.is_available() must not be asked for a remote runner")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    dev.check_local_device("cuda", ["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t"])
    dev.check_local_device("cuda:3", ["--runner=FlinkRunner", "--flink_master=jm:8081"])


def test_local_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    dev.check_local_device("cuda:1", [])
    with pytest.raises(UsageError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        dev.check_local_device("cuda:2", [])


@pytest.mark.parametrize("command", ["tokenize", "fit-codebook"])
def test_beam_runner_stops_before_the_job_starts(command, monkeypatch, real_audio_dir, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    argv = [command, "--input", str(real_audio_dir / "score_bach_bwv66_6.wav"), "--output", str(out),
            "--device", "cuda"] + (["--codebook", str(tmp_path / "no-codebook")] if command == "tokenize" else [])
    with pytest.raises(SystemExit) as e:
        beam_runner.main(argv)
    assert str(e.value) == f"{command}: {REFUSAL}" and e.value.code == 2
    assert not out.exists()  # nothing written: no model loaded, no job


# ---- the semantic codebook's search on the GPU (faiss-gpu) ----------------------------------------

def _codebook(seed: int = 0):
    rng = np.random.default_rng(seed)
    return fit_kmeans(rng.standard_normal((800, 8)).astype(np.float32), 16, seed=seed, n_iter=5), rng


def _nearest_loop(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Reference: squared L2 to each centroid, float64, lowest index on ties."""
    return np.array([int(np.argmin(((c.astype(np.float64) - row) ** 2).sum(1))) for row in x], np.uint16)


def test_codebook_stays_on_cpu_with_faiss_cpu_and_says_so(caplog, monkeypatch):
    import faiss

    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)  # faiss-cpu, on any machine
    cb, rng = _codebook()
    x = rng.standard_normal((50, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="tokenmill"):
        got = handlers.codebook_on_device(cb, "cuda")
    assert got is cb and np.array_equal(got.assign(x), _nearest_loop(x, cb.centroids))
    assert "no GPU support (faiss-cpu)" in caplog.text and "faiss-gpu" in caplog.text
    caplog.clear()
    assert handlers.codebook_on_device(cb, "cpu") is cb and not caplog.text


def test_codebook_search_moves_to_the_device_gpu(monkeypatch):
    """faiss-gpu stand-in: index_cpu_to_gpu records its GPU number and returns the CPU index, so
    the search result can be checked against the NumPy reference."""
    import faiss

    from tokenmill.tokenizers.kmeans import CodebookError

    moved = []

    class Resources:
        pass

    def to_gpu(res, gpu, index):
        assert isinstance(res, Resources)
        moved.append(gpu)
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    cb, rng = _codebook(1)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    got = handlers.codebook_on_device(cb, "cuda:1")
    assert moved == [1] and isinstance(got._gpu_resources, Resources)
    assert np.array_equal(got.assign(x), _nearest_loop(x, cb.centroids))
    handlers.codebook_on_device(_codebook(2)[0], "cuda")
    assert moved == [1, 0]
    with pytest.raises(CodebookError, match=r"GPU 2 asked for but faiss sees 2 GPU\(s\).*--device cuda:N"):
        handlers.codebook_on_device(_codebook(3)[0], "cuda:2")
