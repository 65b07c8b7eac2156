"""Compatibility guard: refuse shards whose codebooks or schema differ from what a reader expects.

Token ids only mean something together with the codebook that produced them: semantic token 17 of
one k-means codebook is unrelated to token 17 of another, and the same holds for the MuLan RVQ and
the acoustic codec. A trainer resumed from a checkpoint, or a reader built for one dataset, must
therefore refuse shards tokenized with other codebooks instead of silently training on noise
(DESIGN §4: "Trainers refuse shards whose codebook ids differ from the checkpoint's").

Where the manifest records each stream's id (the values `codebook_ids` returns and
`check_compatible` compares):

| stream   | manifest field                          | what it identifies                  |
|----------|-----------------------------------------|-------------------------------------|
| semantic | codebooks.semantic                      | k-means codebook, "semantic-<sha12>" |
| mulan    | codebooks.mulan                         | MuLan RVQ codebook, "mulan-<sha12>"  |
| melody   | codebooks.melody                        | melody RVQ codebook, "melody-<sha12>" |
| acoustic | tokenizers.acoustic.weights_sha256      | codec weights (its RVQ lives inside) |

and the record schema version in `schema_version`. A trainer stores `codebook_ids(manifest)` and
`manifest["schema_version"]` in its checkpoint and passes them back here (or to
`shards.read_dataset(..., expect_codebooks=, expect_schema=)`) when it reads shards again.
No Beam, no torch.
"""
from __future__ import annotations

from typing import Any, Mapping

from tokenmill.errors import TokenmillError

# stream -> (manifest field path, what the id names, how to re-tokenize with the expected one)
ID_FIELDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "semantic": (("codebooks", "semantic"), "semantic codebook id",
                 "tokenize --codebook DIR holding {expected}.safetensors"),
    "mulan": (("codebooks", "mulan"), "MuLan RVQ codebook id",
              "tokenize --mulan_codebook PATH of {expected}.safetensors, with the MuLan weights it "
              "was fitted on"),
    "melody": (("codebooks", "melody"), "melody RVQ codebook id",
               "tokenize --melody_codebook PATH of {expected}.safetensors, with the melody model it "
               "was fitted on"),
    "acoustic": (("tokenizers", "acoustic", "weights_sha256"), "acoustic codec weights sha256",
                 "tokenize --acoustic_model PATH of those codec weights"),
}


class CompatibilityError(TokenmillError, ValueError):
    """Shards were tokenized with other codebooks (or another schema) than the reader expects."""


def _field(manifest: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = manifest
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def codebook_ids(manifest: Mapping[str, Any], *, source: str = "manifest.json") -> dict[str, str]:
    """stream -> the id its tokens depend on, for every token stream the manifest declares.

    Raises CompatibilityError when a declared stream has no recorded id (a manifest that cannot be
    checked is refused rather than trusted)."""
    out = {}
    for stream in manifest.get("streams", {}):
        if stream not in ID_FIELDS:
            raise CompatibilityError(
                f"{source}: stream {stream!r} has no known codebook id field (known: "
                f"{sorted(ID_FIELDS)}); this tokenmill is older than the dataset, upgrade it")
        path, what, _ = ID_FIELDS[stream]
        value = _field(manifest, path)
        if not isinstance(value, str) or not value:
            raise CompatibilityError(
                f"{source}: the {stream} stream is declared but its {what} ({'.'.join(path)}) is "
                "missing; the manifest is incomplete, re-run tokenize to rewrite it")
        out[stream] = value
    return out


def check_compatible(manifest: Mapping[str, Any], *, schema_version: str | None = None,
                     codebooks: Mapping[str, str] | None = None,
                     source: str = "manifest.json") -> None:
    """Raise CompatibilityError unless the dataset matches every expectation given.

    `schema_version`: the record schema the reader was written for (exact match; None: not checked).
    `codebooks`: stream -> expected id (see the module table), e.g. a checkpoint's
    `codebook_ids(...)`. Only the streams named are checked (a semantic-stage trainer need not care
    about the codec), and each named stream must be present in the dataset. `source` is the
    dataset path, named in the message. Every mismatch is listed, with both values and the fix.
    """
    problems: list[str] = []
    fixes: list[str] = []
    if schema_version is not None:
        found = manifest.get("schema_version")
        if found != schema_version:
            problems.append(f"record schema version: expected {schema_version}, found {found}")
            fixes.append(f"schema: re-tokenize with a tokenmill that writes schema {schema_version}, "
                         f"or read with one that reads schema {found}")
    if codebooks:
        unknown = sorted(set(codebooks) - set(ID_FIELDS))
        if unknown:
            raise CompatibilityError(f"expected codebooks name unknown stream(s) {unknown}; known: "
                                     f"{sorted(ID_FIELDS)} (while checking {source})")
        found_ids = codebook_ids(manifest, source=source)
        for stream, expected in codebooks.items():
            path, what, retokenize = ID_FIELDS[stream]
            if not isinstance(expected, str) or not expected:
                raise CompatibilityError(f"expected {what} for {stream} must be a non-empty string, "
                                         f"got {expected!r} (while checking {source})")
            found = found_ids.get(stream)
            if found == expected:
                continue
            if found is None:
                problems.append(f"{what}: expected {expected}, found none ({source} has no {stream} "
                                "stream)")
                fixes.append(f"{stream}: re-tokenize with the {stream} stream enabled ("
                             + retokenize.format(expected=expected) + ")")
                continue
            problems.append(f"{what}: expected {expected}, found {found} ({'.'.join(path)} in "
                            "manifest.json)")
            fixes.append(f"{stream}: re-tokenize with {expected} ({retokenize.format(expected=expected)}), "
                         f"or rebuild the {stream} stream with it (beam_runner.py rebuild), or pass "
                         f"the checkpoint trained on {found}")
    if problems:
        raise CompatibilityError(
            f"{source} is incompatible with what this reader expects:\n"
            + "".join(f"  - {p}\n" for p in problems)
            + "fix:\n" + "\n".join(f"  - {f}" for f in fixes))
