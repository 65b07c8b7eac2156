"""The evaluation report: numbers (report.json), a table like the MusicLM paper's Table 1
(report.md) and plots (PNG bytes). Pure: arrays and dicts in, dicts and bytes out; the pipeline
writes the files.

Plots: mcc_per_aspect.png (mean MCC of the clips holding each of the most frequent aspects),
kld_distribution.png (histogram of KL(P_ref ‖ Q_gen) per pair), embeddings_<file_label(embedder spec)>.png
(reference vs generated clips, each clip the mean of its frames, projected on the two principal
axes of both sets together)."""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np

from tokenmill.eval.fad import GaussStats, Interval, bootstrap_fad, fad, fad_inf
from tokenmill.eval.intervals import bootstrap_mean
from tokenmill.eval.kld import kld_pairs
from tokenmill.eval.mcc import cosines, per_aspect


@dataclass(frozen=True)
class ResampleConfig:
    n_boot: int = 100  # FAD bootstrap draws
    n_boot_mean: int = 1000  # KLD / MCC bootstrap draws
    level: float = 0.95
    fad_inf_steps: int = 8
    fad_inf_min_fraction: float = 0.25
    fad_inf_resamples: int = 2
    seed: int = 0


def _iv(iv: Interval) -> dict:
    return {"value": iv.value, "lo": iv.lo, "hi": iv.hi, "level": iv.level, "n_boot": iv.n_boot}


@dataclass
class FadInput:
    embedder: dict  # describe()
    generated_clips: list  # float32 [F_i, D] per generated clip
    generated: GaussStats
    reference: GaussStats
    n_reference_clips: int | None
    reference_artifact: str | None
    reference_clip_means: np.ndarray | None = None  # float [N_ref, D] for the projection plot
    notes: list = field(default_factory=list)


def fad_section(x: FadInput, rc: ResampleConfig) -> dict:
    out = {"embedder": x.embedder, "n_generated_frames": x.generated.n, "n_generated_clips": len(x.generated_clips),
           "n_reference_frames": x.reference.n, "n_reference_clips": x.n_reference_clips,
           "reference_stats": x.reference_artifact,
           "fad": fad(x.generated, x.reference)}
    if rc.n_boot > 0 and len(x.generated_clips) >= 2:
        out["interval"] = _iv(bootstrap_fad(x.generated_clips, x.reference, n_boot=rc.n_boot, level=rc.level,
                                            seed=rc.seed))
    else:
        out["interval"] = None
        x.notes.append("no bootstrap interval: fewer than 2 generated clips, or --fad_bootstrap 0")
    try:
        fi = fad_inf(x.generated_clips, x.reference, steps=rc.fad_inf_steps, min_fraction=rc.fad_inf_min_fraction,
                     resamples=rc.fad_inf_resamples, seed=rc.seed)
        out["fad_inf"] = {"value": fi.value, "slope": fi.slope, "r2": fi.r2,
                          "points": [{"n_frames": n, "fad": v} for n, v in fi.points]}
    except Exception as e:  # noqa: BLE001 — too few clips: reported, not fatal
        out["fad_inf"] = None
        x.notes.append(f"no FAD-inf: {e}")
    out["notes"] = list(x.notes)
    return out


def kld_section(classifier: dict, keys: list[str], p_ref: np.ndarray, q_gen: np.ndarray, labels: list[str],
                rc: ResampleConfig) -> tuple[dict, np.ndarray]:
    fwd, back = kld_pairs(p_ref, q_gen) if len(keys) else (np.zeros(0), np.zeros(0))
    sec = {"classifier": classifier, "n_pairs": len(keys), "n_labels": len(labels), "labels": labels,
           "kl_ref_gen": _iv(bootstrap_mean(fwd, n_boot=rc.n_boot_mean, level=rc.level, seed=rc.seed)),
           "kl_gen_ref": _iv(bootstrap_mean(back, n_boot=rc.n_boot_mean, level=rc.level, seed=rc.seed + 1)),
           "definition": "per pair KL(P_reference || Q_generated) (kl_ref_gen) and KL(Q || P) (kl_gen_ref), "
                         "natural log, averaged over pairs"}
    return sec, fwd


def mcc_section(model: dict, text: np.ndarray, audio_emb: np.ndarray, aspects: list, rc: ResampleConfig,
                min_clips: int = 1) -> tuple[dict, np.ndarray]:
    cos = cosines(text, audio_emb) if len(text) else np.zeros(0)
    return {"model": model, "n": int(len(cos)),
            "mcc": _iv(bootstrap_mean(cos, n_boot=rc.n_boot_mean, level=rc.level, seed=rc.seed + 2)),
            "per_aspect": {a: {"mcc": m, "n": n} for a, (m, n) in per_aspect(cos, aspects, min_clips).items()},
            "definition": "cosine between the caption's text embedding and the generated clip's audio "
                          "embedding (L2-normalized mean of its 10 s windows), averaged over clips"}, cos


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return "0.000" if abs(v) < 5e-4 else f"{v:.3f}"  # no "-0.000" from rounding


def _with_iv(iv: dict | None, value=None) -> str:
    if iv is None:
        return _fmt(value)
    return f"{_fmt(iv['value'] if value is None else value)} [{_fmt(iv['lo'])}, {_fmt(iv['hi'])}]"


def render_markdown(rep: dict) -> str:
    fads = rep.get("fad") or {}
    cols = [f"FAD<sub>{name}</sub>" for name in fads] + [f"FAD∞<sub>{name}</sub>" for name in fads] + ["KLD", "MCC"]
    row = [_with_iv(s["interval"], s["fad"]) for s in fads.values()]
    row += [_fmt((s.get("fad_inf") or {}).get("value")) for s in fads.values()]
    kld, mcc = rep.get("kld"), rep.get("mcc")
    row.append(_with_iv(kld["kl_ref_gen"]) if kld else "–")
    row.append(_with_iv(mcc["mcc"]) if mcc else "–")
    g, r = rep["inputs"]["generated"], rep["inputs"]["reference"]
    lines = ["# Evaluation report", "",
             f"Generated `{g['spec']}` ({g['scored']} clips) vs reference `{r['spec']}` ({r['scored']} clips); "
             f"tokenmill {rep['tokenmill_version']}. Intervals: {int(100 * rep['config']['resample']['level'])} % "
             "percentile bootstrap.", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
             f"| {g.get('name') or 'generated'} | " + " | ".join(row) + " |", ""]
    for name, s in fads.items():
        e = s["embedder"]
        lines.append(f"- FAD<sub>{name}</sub>: {e['name']} (weights sha256 {str(e.get('weights_sha256'))[:12]}…), "
                     f"{s['n_generated_frames']} generated / {s['n_reference_frames']} reference embeddings "
                     f"({e.get('frames', '')}); reference statistics `{s['reference_stats']}`."
                     + (" " + " ".join(s["notes"]) if s["notes"] else ""))
    if kld:
        c = kld["classifier"]
        lines.append(f"- KLD: {c['name']} over {kld['n_labels']} labels, temperature {c['temperature']:g}, "
                     f"{kld['n_pairs']} pairs; reverse direction KL(Q‖P) {_with_iv(kld['kl_gen_ref'])}.")
    if mcc:
        lines.append(f"- MCC: {mcc['model']['name']} (weights sha256 {str(mcc['model'].get('weights_sha256'))[:12]}…), "
                     f"{mcc['n']} captioned generated clips.")
    for note in rep.get("notes", []):
        lines.append(f"- {note}")
    dead = rep["inputs"]
    lines += ["", "| side | inputs | scored | dead letters |", "|---|---|---|---|"]
    for side in ("generated", "reference"):
        d = dead[side]
        lines.append(f"| {side} | {d['inputs']} | {d['scored']} | {d['dead_letters']} |")
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render_plots(rep: dict, kl_values: np.ndarray | None, projections: dict[str, tuple[np.ndarray, np.ndarray]],
                 top_aspects: int = 30) -> dict[str, bytes]:
    """{file name: PNG bytes}; `projections`: embedder → (reference clip means, generated clip means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    mcc = rep.get("mcc")
    if mcc and mcc["per_aspect"]:
        items = list(mcc["per_aspect"].items())[:top_aspects]
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(items) + 1.5))
        ax.barh([f"{a} ({v['n']})" for a, v in items][::-1], [v["mcc"] for _, v in items][::-1], color="#4477aa")
        ax.axvline(mcc["mcc"]["value"], color="k", lw=1, ls="--", label=f"all clips {mcc['mcc']['value']:.3f}")
        ax.set_xlabel("MCC (mean cosine, caption text vs generated audio)")
        ax.set_title(f"MCC per aspect (the {len(items)} most frequent; clips in brackets)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        out["mcc_per_aspect.png"] = _png(fig)
    if kl_values is not None and len(kl_values):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(kl_values, bins=min(40, max(5, len(kl_values) // 3)), color="#aa3377")
        ax.axvline(float(np.mean(kl_values)), color="k", lw=1, ls="--", label=f"mean {np.mean(kl_values):.3f}")
        ax.set_xlabel("KL(P_reference ‖ Q_generated) per pair (nats)")
        ax.set_ylabel("pairs")
        ax.legend()
        fig.tight_layout()
        out["kld_distribution.png"] = _png(fig)
    for name, (ref, gen) in projections.items():
        if ref is None or gen is None or len(ref) + len(gen) < 3:
            continue
        both = np.concatenate([ref, gen]).astype(np.float64)
        mu = both.mean(axis=0)
        _, _, vt = np.linalg.svd(both - mu, full_matrices=False)
        axes = vt[:2].T if vt.shape[0] >= 2 else np.pad(vt.T, ((0, 0), (0, 1)))
        pr, pg = (ref - mu) @ axes, (gen - mu) @ axes
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.scatter(pr[:, 0], pr[:, 1], s=12, alpha=0.6, label=f"reference ({len(ref)})", color="#4477aa")
        ax.scatter(pg[:, 0], pg[:, 1], s=12, alpha=0.6, label=f"generated ({len(gen)})", color="#ee6677")
        ax.set_xlabel("principal axis 1")
        ax.set_ylabel("principal axis 2")
        ax.set_title(f"{name}: clip embeddings (mean of frames), PCA of both sets")
        ax.legend()
        fig.tight_layout()
        out[f"embeddings_{file_label(name)}.png"] = _png(fig)
    return out


def file_label(spec: str) -> str:
    """A file-name-safe label of an embedder spec: the spec itself when it is a plain name
    ("mulan"), else its name and a hash of the whole spec ("hf-3fa4c1d2" for "hf=/models/x,layer=7")."""
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9_.-]+", spec):
        return spec
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split("=", 1)[0].split(",", 1)[0]).strip("_") or "embedder"
    return f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def config_dict(rc: ResampleConfig) -> dict:
    return asdict(rc)
