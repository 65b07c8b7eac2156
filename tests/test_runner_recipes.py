"""What Beam allows offline of the docs/runners.md recipes (Dataflow, Flink, Spark): the job graphs
build with each runner's options and serialize to the portable proto; every DoFn and ModelHandler
survives Beam's pickler; nothing in the graph names a path of this machine (models and codebooks
are read through Beam FileSystems, here a fake remote filesystem `tmfake://`); and a model or
codebook given as a remote URL is copied locally on the worker and gives the same tokenizer."""
from __future__ import annotations

import base64
import bz2
import os
import re
import tempfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.ml.inference.base import ModelHandler

import beam_runner
from tokenmill.pipelines.options import DEFAULT_SEMANTIC_EXTRACTOR
from tokenmill.pipelines import options as opts
from tokenmill.pipelines.runner import make_pipeline
from tokenmill.tokenizers.kmeans import fit_kmeans

ROOT = Path(__file__).resolve().parents[1]

RUNNERS = {
    "dataflow": ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
                 "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py",
                 "--sdk_container_image=europe-docker.pkg.dev/my-project/tokenmill/worker:1",
                 "--experiments=use_runner_v2"],
    "flink": ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--environment_type=DOCKER",
              "--environment_config=europe-docker.pkg.dev/my-project/tokenmill/worker:1"],
    "spark": ["--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077",
              "--environment_type=DOCKER", "--environment_config=europe-docker.pkg.dev/my-project/tokenmill/worker:1"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=flink-jobserver:8099",
                 "--environment_type=EXTERNAL", "--environment_config=beam-worker-pool:50000"],
}


class FakeRemoteFileSystem(LocalFileSystem):
    """`tmfake://bucket/a/b` ↔ FakeRemoteFileSystem.root/bucket/a/b, object-store style (no
    directories: `exists` is true for files only). Beam finds it by its scheme, as it finds gs://."""

    root = ""

    @classmethod
    def scheme(cls):
        return "tmfake"

    def _local(self, url: str) -> str:
        return os.path.join(self.root, url[len("tmfake://"):]) if url.startswith("tmfake://") else url

    def _url(self, path: str) -> str:
        return "tmfake://" + os.path.relpath(path, self.root)

    def has_dirs(self):
        return False

    def join(self, base, *paths):
        return "/".join([base.rstrip("/"), *paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def _list(self, prefix):
        local = self._local(prefix)
        for dirpath, _, names in os.walk(local if os.path.isdir(local) else os.path.dirname(local)):
            for n in names:
                p = os.path.join(dirpath, n)
                if p.startswith(local):
                    yield FileMetadata(self._url(p), os.path.getsize(p), os.path.getmtime(p))

    def exists(self, path):
        return os.path.isfile(self._local(path))

    def metadata(self, path):
        p = self._local(path)
        return FileMetadata(path, os.path.getsize(p), os.path.getmtime(p))

    def open(self, path, *a, **kw):
        return super().open(self._local(path), *a, **kw)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A fake bucket holding a semantic codebook and the packaged SoundStream weights."""
    import shutil

    from tokenmill.tokenizers.soundstream import DEFAULT_WEIGHTS
    from tokenmill.tokenizers.semantic import build_extractor

    root = tmp_path_factory.mktemp("bucket_root")
    FakeRemoteFileSystem.root = str(root)
    saved_tmp, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("worker_tmp"))  # model copies
    rng = np.random.default_rng(0)
    dim = build_extractor(DEFAULT_SEMANTIC_EXTRACTOR).dim
    (root / "bucket" / "cb").mkdir(parents=True)
    fit_kmeans(rng.standard_normal((400, dim)).astype(np.float32), 8, seed=0, kind="semantic").save(root / "bucket" / "cb")
    (root / "bucket" / "models").mkdir()
    shutil.copy(DEFAULT_WEIGHTS, root / "bucket" / "models" / DEFAULT_WEIGHTS.name)  # the hash covers the name
    yield root
    tempfile.tempdir = saved_tmp


def tokenize_args(extra=()):
    return ["tokenize", "--input", "gs://my-bucket/audio/*.flac", "--input", "gs://my-bucket/more/**",
            "--output", "gs://my-bucket/datasets/ds1", "--codebook", "tmfake://bucket/cb",
            "--acoustic_codec", "soundstream", "--acoustic_model", "tmfake://bucket/models/soundstream-24k-default.safetensors",
            "--mulan_model", "none", "--melody_model", "none", *extra]


def build_tokenize_graph(beam_args: list[str]):
    """The tokenize job as beam_runner.main wires it (launch-time model descriptions included),
    built into a pipeline made by make_pipeline(beam_args), not run."""
    from tokenmill.pipelines.handlers import describe_acoustic, describe_semantic
    from tokenmill.pipelines.tokenize import build_tokenize

    parser = beam_runner._parser()
    args, rest = parser.parse_known_args(tokenize_args())
    assert rest == []
    acoustic = opts.acoustic_config(args)
    acoustic_desc = describe_acoustic(acoustic)
    cfg = opts.tokenize_config(args, acoustic_desc["sample_rate_hz"])
    semantic_desc, _ = describe_semantic(cfg.semantic, cfg.codebook)
    p = make_pipeline(beam_args)
    build_tokenize(p, cfg, semantic_desc=semantic_desc, acoustic_desc=acoustic_desc)
    return p


def build_fit_graph(beam_args: list[str]):
    from tokenmill.pipelines.fit import build_fit
    from tokenmill.pipelines.handlers import semantic_extractor

    args, rest = beam_runner._parser().parse_known_args(
        ["fit-codebook", "--input", "gs://my-bucket/audio/*.flac", "--output", "gs://my-bucket/codebooks"])
    assert rest == []
    cfg = opts.fit_codebook_config(args)
    p = make_pipeline(beam_args)
    build_fit(p, cfg, extractor_desc=semantic_extractor(cfg.semantic).describe())
    return p


def user_functions(p: beam.Pipeline) -> tuple[list, list]:
    """(DoFns of every ParDo, ModelHandlers of every RunInference) in the graph."""
    fns, handlers = [], []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            t = node.transform
            if isinstance(t, beam.ParDo):
                fns.append(t.fn)
            h = getattr(t, "_model_handler", None)
            if isinstance(h, ModelHandler):
                handlers.append(h)

        enter_composite_transform = visit_transform

    p.visit(Visitor())
    return fns, handlers


def machine_paths() -> list[str]:
    home = os.path.expanduser("~")
    return sorted({str(ROOT), "/work/", tempfile.gettempdir().rstrip("/") + "/", "/tmp/", home + "/",
                   FakeRemoteFileSystem.root})


PATHISH = re.compile(rb"[\w./+-]+")


def baked_paths(blob: bytes) -> list[str]:
    """Local paths in `blob`, except source file names of code objects (cloudpickle pickles
    lambdas by value with their co_filename, which is only used in tracebacks)."""
    found = []
    for prefix in machine_paths():
        for m in re.finditer(re.escape(prefix.encode()), blob):
            start = m.start()
            while start > 0 and PATHISH.fullmatch(blob[start - 1:start]):
                start -= 1
            end = m.end()
            while end < len(blob) and PATHISH.fullmatch(blob[end:end + 1]):
                end += 1
            path = blob[start:end].decode(errors="replace")
            if not path.endswith(".py"):
                found.append(path)
    return sorted(set(found))


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("job", ["tokenize", "fit"])
def test_graph_builds_serializes_and_names_no_local_path(remote, runner, job):
    assert baked_paths(f"\x01{ROOT}/tests/data/a.flac\x00".encode()) == [f"{ROOT}/tests/data/a.flac"]  # the check bites
    p = (build_tokenize_graph if job == "tokenize" else build_fit_graph)(RUNNERS[runner])
    proto = p.to_runner_api()
    assert len(proto.components.transforms) > 20
    blobs = [proto.SerializeToString()]
    fns, handlers = user_functions(p)
    assert fns and (handlers or job == "fit")
    for obj in fns + handlers:
        data = pickler.dumps(obj)
        back = pickler.loads(data)
        assert type(back) is type(obj)
        if hasattr(obj, "cfg"):
            assert back.cfg == obj.cfg
        blobs.append(bz2.decompress(base64.b64decode(data)))
    for blob in blobs:
        assert baked_paths(blob) == [], "a local path is baked into the job graph"


def test_every_model_handler_of_tokenize_pickles(remote):
    p = build_tokenize_graph([])
    _, handlers = user_functions(p)
    names = sorted(type(h._unkeyed).__name__ if hasattr(h, "_unkeyed") else type(h).__name__ for h in handlers)
    assert names == ["AcousticTokenHandler", "SemanticTokenHandler"]


def test_remote_model_and_codebook_load_through_filesystems(remote):
    """The handlers' load_model on a worker: tmfake:// codebook + weights are copied locally (once
    per machine) and give the same tokenizer as the local files."""
    from tokenmill.pipelines.handlers import AcousticTokenHandler, SemanticTokenHandler, local_model_path
    from tokenmill.pipelines.options import AcousticConfig, SemanticConfig
    from tokenmill.tokenizers.soundstream import DEFAULT_WEIGHTS

    model = AcousticTokenHandler(AcousticConfig(codec="soundstream", codec_config=(("path", "tmfake://bucket/models/soundstream-24k-default.safetensors"),))).load_model()
    assert model.weights_sha256 == AcousticTokenHandler(AcousticConfig(codec="soundstream")).load_model().weights_sha256
    local = local_model_path("tmfake://bucket/models/soundstream-24k-default.safetensors", "--acoustic_model")
    assert Path(local).read_bytes() == DEFAULT_WEIGHTS.read_bytes()
    assert local_model_path("tmfake://bucket/models/soundstream-24k-default.safetensors", "--acoustic_model") == local  # cached
    tok = SemanticTokenHandler(SemanticConfig(), "tmfake://bucket/cb").load_model()
    (cb,) = sorted((remote / "bucket" / "cb").glob("semantic-*.safetensors"))
    assert tok.codebook.id == cb.stem
    d = local_model_path("tmfake://bucket/cb", "--semantic_path")  # a directory: every file under it
    assert sorted(p.name for p in Path(d).iterdir()) == sorted(p.name for p in cb.parent.iterdir())
    with pytest.raises(FileNotFoundError, match="--mulan_path tmfake://bucket/nothing"):
        local_model_path("tmfake://bucket/nothing", "--mulan_path")


def test_setup_file_stages_the_package_with_its_weights(tmp_path):
    """What --setup_file ./setup.py makes Beam upload for the workers: an sdist of tokenmill with
    beam_runner.py and the packaged weights (built here as the stager builds it, offline)."""
    import tarfile

    from apache_beam.runners.portability.stager import Stager

    tarball = Stager._build_setup_package(str(ROOT / "setup.py"), str(tmp_path), None)
    with tarfile.open(tarball) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"beam_runner.py", "tokenmill/pipelines/tokenize.py", "tokenmill/pipelines/handlers.py",
            "tokenmill/weights/soundstream-24k-default.safetensors", "pyproject.toml"} <= names


def test_every_command_in_docs_runners_parses():
    """Each complete `beam_runner.py` command of docs/runners.md parses: tokenmill's flags by its
    parser, the rest are options Beam defines (check_beam_args refuses any other)."""
    import shlex

    from tokenmill.pipelines.runner import check_beam_args

    text = (ROOT / "docs" / "runners.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines()
                if "beam_runner.py" in c and "..." not in c]
    assert len(commands) >= 5
    for c in commands:
        tokens = shlex.split(c.split("beam_runner.py", 1)[1])
        args, rest = beam_runner._parser().parse_known_args(tokens)
        check_beam_args(rest, [])
        assert any(r.startswith("--runner=") for r in rest) or args.command == "tokenize", c


def test_a_replaced_remote_model_is_copied_again(remote):
    from tokenmill.pipelines.handlers import local_model_path

    f = remote / "bucket" / "models" / "tiny.bin"
    f.write_bytes(b"v1")
    first = local_model_path("tmfake://bucket/models/tiny.bin", "--mulan_path")
    f.write_bytes(b"version 2")
    second = local_model_path("tmfake://bucket/models/tiny.bin", "--mulan_path")
    assert (Path(first).read_bytes(), Path(second).read_bytes()) == (b"v1", b"version 2")
