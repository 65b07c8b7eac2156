"""tokenmill command line: one table of commands, one parser, one error path.

    tokenmill fit-codebook --input 'audio/*.flac' --output codebooks/
    tokenmill tokenize --input 'audio/*.flac' --codebook codebooks/ --output dataset/
    tokenmill verify dataset/
    tokenmill stats dataset/ --plots plots/
    tokenmill rebuild --dataset dataset/ --stream semantic --codebook codebooks/ --output dataset.v2/
    tokenmill decode --dataset dataset/ --output listen.wav
    tokenmill embed-text "a calm piano piece" "fast drums"
    tokenmill fit-codebook --stream mulan --input 'audio/*.flac' --output codebooks/
    tokenmill train --stage semantic --data dataset/ --output runs/semantic
    tokenmill train-codec --data 'audio/**/*.flac' --output runs/codec
    tokenmill train-mulan --manifest corpus/manifest.jsonl --output runs/mulan
    tokenmill train-semantic --renders renders/ --output runs/melodic
    tokenmill train-melody --pairs pairs/ --output runs/melody
    tokenmill generate --text "a calm piano piece" --checkpoints runs/ --output piano.wav
    tokenmill generate --captions musiccaps.csv --checkpoints runs/ --output gen/
    tokenmill memorization --dataset dataset/ --checkpoints runs/ --output report/
    tokenmill evaluate --generated 'gen/*.wav' --reference musiccaps.csv --output report/

`tokenmill` (the console script), `python -m tokenmill.cli` and `python beam_runner.py` are the
same CLI. Options a Beam command does not know are Beam pipeline options, passed through
unchanged: --runner (default: the embedded local runner), --direct_running_mode=multi_processing,
--direct_num_workers=N, and for Dataflow --project/--region/--temp_location/--setup_file.

Adding a command is one COMMANDS row and one module under tokenmill/cli/ with `add_args(parser)`
and `run(args, beam_args) -> exit status` (docs/design.md, section 10).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tokenmill.errors import TokenmillError, UsageError

# command -> (module, one-line help, takes Beam pipeline options). Modules are imported only when
# their command runs (or when the whole parser is built, e.g. for tests).
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "fit-codebook": ("tokenmill.cli.fit_codebook",
                     "fit the semantic k-means codebook, or (--stream mulan) the MuLan RVQ", True),
    "tokenize": ("tokenmill.cli.tokenize", "tokenize audio into Parquet + WebDataset shards with a manifest", True),
    "decode": ("tokenmill.cli.decode", "write one record's acoustic tokens back to a WAV, for listening", False),
    "embed-text": ("tokenmill.cli.embed_text", "print the MuLan text tokens (M_T) of captions", False),
    "verify": ("tokenmill.cli.verify", "check a dataset directory against its manifest", False),
    "rebuild": ("tokenmill.cli.rebuild", "refit one stream's codebook (ids kept) and write a dataset version "
                                         "that rewrites only that stream (a Beam job)", True),
    "stats": ("tokenmill.cli.stats", "print what a dataset holds and how well each codebook is used", False),
    "train": ("tokenmill.cli.train", "train one MusicLM stage (semantic, coarse or fine) on tokenized shards; "
                                     "runs under torchrun too", False),
    "train-codec": ("tokenmill.cli.train_codec", "train (or export) the built-in SoundStream codec on audio files",
                    False),
    "train-mulan": ("tokenmill.cli.train_mulan", "train, evaluate or export the built-in MuLan on captioned music",
                    False),
    "train-semantic": ("tokenmill.cli.train_semantic",
                       "train or export the built-in melodic semantic extractor on score renders", False),
    "train-melody": ("tokenmill.cli.train_melody",
                     "train or export the built-in melody model on same-melody score renders", False),
    "generate": ("tokenmill.cli.generate", "text to music with trained semantic, coarse and fine stage "
                                           "checkpoints (--captions: one clip per row, a Beam job)", True),
    "memorization": ("tokenmill.cli.memorization",
                     "does a trained semantic stage copy its training data? (MusicLM 4.4; or --generated: search "
                     "the training set for copies of generated windows)", True),
    "evaluate": ("tokenmill.cli.evaluate",
                 "FAD, KLD and MCC of generated vs reference audio (report.json, report.md, plots)", True),
}

BEAM_EPILOG = """Beam options: anything not listed above is passed to Beam, e.g. --runner=DataflowRunner,
--direct_running_mode=multi_processing --direct_num_workers=2. Without --runner the job runs
in-process on Beam's embedded runner (no Prism download)."""


class _QuietOptionalClients(logging.Filter):
    """Beam's GCP modules warn on import about optional BigQuery clients that local jobs never use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


# installed before Beam is imported: its import-time warning goes through the root logger
logging.getLogger().addFilter(_QuietOptionalClients())


class CommandError(SystemExit):
    """Exit status 2 after a TokenmillError; str() is the message already printed to stderr."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def command_module(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argparse tree of COMMANDS. With `only`, just that command's module is imported and its
    flags added (every command still shows in `--help`)."""
    p = argparse.ArgumentParser(prog="tokenmill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_line, takes_beam_args) in COMMANDS.items():
        cp = sub.add_parser(name, help=help_line, description=help_line, allow_abbrev=False,
                            epilog=BEAM_EPILOG if takes_beam_args else None)
        cp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and tracebacks of errors (also accepted before COMMAND)")
        if only is None or only == name:
            command_module(name).add_args(cp)  # may set cp.description / epilog / formatter_class
    return p


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001


def _setup_logging(verbose: bool) -> None:
    # Not basicConfig: a module-level logging.warning() during an import (Beam's) has already
    # installed a plain root handler, so basicConfig would do nothing and leave the root at
    # WARNING: every INFO progress line was silent. Set the level and format here instead; other
    # handlers (pytest's capture handler, a caller's) are left as they are.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(fmt)
        handler.addFilter(_QuietOptionalClients())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("apache_beam", "faiss", "numba", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _check_extra_args(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """The one check of arguments no tokenmill flag took: Beam options for a Beam command (a typo
    gets a did-you-mean), refused for every other command."""
    if not extra:
        return
    if not COMMANDS[command][2]:
        raise UsageError(f"unknown argument(s) {' '.join(extra)}; see {command} --help")
    from tokenmill.pipelines.runner import check_beam_args

    check_beam_args(extra, [o for a in subparser(parser, command)._actions for o in a.option_strings])  # noqa: SLF001


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only if only in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    try:
        _check_extra_args(parser, args.command, extra)
        return command_module(args.command).run(args, extra)
    except (TokenmillError, FileNotFoundError) as e:  # one error path: the message, exit 2
        if args.verbose:
            import traceback

            traceback.print_exc()
        message = f"{args.command}: {e}"
        print(f"error: {message}", file=sys.stderr)
        raise CommandError(message) from None
