"""`tokenize`: the launch sequence of the main job. Fail fast (flags, models, codebooks, inputs,
incremental base, captions) before the Beam job starts, open the resume journal, run the job
(pipelines/tokenize.py), print the summary."""
from __future__ import annotations

import json
import time

DESCRIPTION = ("Match, decode, resample and segment the inputs; compute acoustic tokens with the codec "
               "(--acoustic_codec), MuLan window embeddings and tokens with the MuLan model and its RVQ "
               "(--mulan_model), and semantic tokens with the codebook; dedupe by content; join captions; split "
               "train/valid by content hash; write deterministic shards, failures-*.jsonl dead letters and "
               "manifest.json. Every input ends in the shards or in the dead letters, and the manifest reconciles.")


def add_args(p) -> None:
    from tokenmill.pipelines.options import add_tokenize_args

    p.description = DESCRIPTION
    add_tokenize_args(p)


def run(args, beam_args: list[str]) -> int:
    from tokenmill.cli._jobs import compute_warning, pin_local_compute
    from tokenmill.errors import UsageError
    from tokenmill.pipelines import options as opts
    from tokenmill.pipelines.ingest import list_inputs
    from tokenmill.pipelines.report import print_summary
    from tokenmill.pipelines.runner import make_pipeline
    from tokenmill.pipelines import incremental
    from tokenmill.pipelines import journal as jr
    from tokenmill.pipelines.handlers import describe_acoustic, describe_semantic
    from tokenmill.pipelines.mulan import describe_mulan
    from tokenmill.pipelines.tokenize import build_tokenize, check_captions, manifest_entries
    from tokenmill.tokenizers import compute

    job_compute, launcher_facts = pin_local_compute(args, beam_args)
    t0 = time.monotonic()

    if args.retry_failures and not args.into:
        raise UsageError("--retry_failures needs --into DIR (the dataset whose dead letters to retry)")
    base = incremental.load_base(args.into) if args.into else None  # before any model loads
    layout = base.layout if base else None
    acoustic = opts.acoustic_config(args)
    mulan = opts.mulan_config(args)  # flag checks before any model loads
    acoustic_desc = describe_acoustic(acoustic) if acoustic.enabled else None
    a_rate = acoustic_desc["sample_rate_hz"] if acoustic_desc else None
    cfg = opts.tokenize_config(args, a_rate, layout=layout, acoustic=acoustic, mulan=mulan)
    t_list = time.monotonic()
    listing = list_inputs(cfg.inputs)  # one listing: fails fast on an empty pattern, sizes the shards
    t_list = time.monotonic() - t_list
    semantic_desc, _ = describe_semantic(cfg.semantic, cfg.codebook)
    mulan_desc = None
    if mulan.enabled:
        mulan_desc = describe_mulan(mulan)
    melody_desc = None
    if cfg.melody.enabled:
        from tokenmill.pipelines.melody import describe_melody

        melody_desc = describe_melody(cfg.melody)
    m_rate = mulan_desc["model"]["sample_rate_hz"] if mulan_desc else None
    # again, now that the MuLan rate and the listing are known (the stream configs are reused)
    cfg = opts.tokenize_config(args, a_rate, m_rate, layout=layout, sizing=(
        listing, manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)[0]),
        semantic=cfg.semantic, acoustic=cfg.acoustic, mulan=cfg.mulan, melody=cfg.melody)
    if cfg.shard_plan is not None:
        sp = cfg.shard_plan
        print(f"shards: {cfg.num_shards} train + {cfg.num_valid_shards} valid per format, for {sp['input_files']} "
              f"inputs ({sp['input_bytes'] / 1e9:.2f} GB, ~{sp['est_audio_hours']:.1f} h of audio, "
              f"~{sp['est_out_bytes'] / 1e9:.2f} GB of arrays) at --target_shard_mb {sp['target_shard_mb']:g} "
              f"(listed in {t_list:.1f} s)")
    plan = None
    if base is not None:
        streams, tokenizers, codebooks = manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)
        incremental.check_compatible(base, tokenizers=tokenizers, codebooks=codebooks, streams=streams,
                                     audio=cfg.to_json()["audio"])
        plan = incremental.make_plan(base, args.retry_failures)
        todo, skipped = incremental.new_inputs(plan, cfg.inputs)
        print(f"tokenize --into {base.root} (version {plan.version}): {len(todo)} inputs to read, {skipped} "
              f"skipped (already in the dataset as a record or dead letter), {len(plan.retry)} dead-letter "
              f"sources retried, {len(plan.retry_missing)} retries missing their file")
        if not todo:
            print(f"nothing to add: {base.root} is left unchanged")
            return 0
    if cfg.captions:
        check_captions(cfg.captions)  # fail fast; the job reads and joins them itself
    compute_entry = compute.describe(job_compute, launcher_facts, args.device)
    if plan is None:
        journal, compute_entry = _journal(cfg, semantic_desc, acoustic_desc, mulan_desc, compute_entry,
                                          melody_desc)
    else:
        journal = jr.open_spill(cfg.output, plan.version)
        compute_warning(f"the dataset {base.root}", incremental.compute_changes(base.manifest, compute_entry))
    with make_pipeline(beam_args) as p:
        build_tokenize(p, cfg, semantic_desc=semantic_desc,
                       acoustic_desc=acoustic_desc, mulan_desc=mulan_desc, plan=plan, journal=journal,
                       compute_entry=compute_entry, melody_desc=melody_desc)
    if plan is None:
        jr.close_journal(cfg.output, journal)
    else:
        jr.remove_work(journal.work)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(f"{cfg.output.rstrip('/')}/manifest.json") as f:  # gs:// etc. too
        manifest = json.load(f)
    print_summary(cfg.output, manifest, verified=False, elapsed_s=time.monotonic() - t0)
    last = (manifest.get("history") or [None])[-1]
    if plan is not None and last and last["version"] == plan.version:
        print(f"  version       {last['version']} ({last['mode']}): {last['inputs_new']} new inputs, "
              f"{last['skipped_present']} skipped as already present, {last['retried']} retried, "
              f"{last['records_added']} records added, {last['dead_letters_replaced']} dead letters "
              f"replaced by {last['dead_letters_added']} new")
    elif plan is not None:
        print(f"  version       nothing changed: {base.root} is left as it was")
    if journal is not None and journal.finished:
        print(f"  resumed       {len(journal.finished)} sources skipped (finished before the interruption, "
              f"taken from its journal), {journal.n_matched - len(journal.finished)} read; see "
              f"{cfg.output.rstrip('/')}/_resumed.json")
    return 0


def _journal(cfg, semantic_desc, acoustic_desc, mulan_desc, compute_entry, melody_desc=None):
    """The resume journal of a full run (pipelines/journal.py): new, or an interrupted run's.
    Returns (journal, the manifest's compute entry: with `resumed_under` when the interrupted run
    used another layout)."""
    from tokenmill import __version__
    from tokenmill.cli._jobs import compute_warning
    from tokenmill.pipelines.journal import open_journal
    from tokenmill.pipelines.tokenize import manifest_entries
    from tokenmill.tokenizers import compute

    streams, tokenizers, codebooks = manifest_entries(semantic_desc, acoustic_desc, mulan_desc, melody_desc)
    job = {k: ({kk: vv for kk, vv in v.items() if kk != "compute"} if isinstance(v, dict) else v)
           for k, v in cfg.to_json().items() if k != "output"}   # the layout may change on resume
    # a JournalError (a TokenmillError) names the journal and the fix
    journal = open_journal(cfg.output, {"job": job, "tokenizers": tokenizers, "codebooks": codebooks,
                                        "streams": streams, "tokenmill_version": __version__}, cfg.inputs,
                           compute_entry=compute_entry)
    if journal.finished:
        changes = compute.differences(journal.compute_before, compute_entry)
        compute_warning(f"the interrupted run of {cfg.output}", changes)
        if changes:
            compute_entry = dict(compute_entry, resumed_from={"compute": journal.compute_before,
                                                              "changes": changes,
                                                              "sources_from_journal": len(journal.finished)})
    if journal.finished:
        print(f"tokenize: resuming {cfg.output}: {len(journal.finished)} of {journal.n_matched} sources were "
              f"finished by an interrupted run and are skipped ({len(journal.entries())} journal entries in "
              f"{journal.work}); the other {journal.n_matched - len(journal.finished)} are read")
    return journal, compute_entry


