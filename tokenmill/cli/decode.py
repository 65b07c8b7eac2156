"""`decode`: one record's acoustic tokens back to a WAV."""
from __future__ import annotations


def add_args(p) -> None:
    p.description = ("Find KEY in the dataset's shards, rebuild the acoustic codec the dataset was tokenized with "
                     "(its weights hash must match the manifest), decode the codes and write a WAV at the codec's "
                     "rate.")
    p.add_argument("--dataset", required=True, metavar="DIR")
    p.add_argument("--key", help="record key (default: the first record of the first shard)")
    p.add_argument("--output", "--out", dest="out", required=True, metavar="WAV",
                   help="output WAV path (--out is the older spelling)")
    p.add_argument("--levels", type=int, help="decode only the first N levels (e.g. 4 = coarse)")
    p.add_argument("--acoustic_model", metavar="PATH",
                   help="weights path, when it differs from the one recorded in the manifest")


def run(args, beam_args: list[str]) -> int:
    import soundfile

    from tokenmill.training.listen import decode_record, first_key

    key = args.key or first_key(args.dataset)
    wave, sr, rec = decode_record(args.dataset, key, args.levels, args.acoustic_model)
    soundfile.write(args.out, wave, sr, subtype="PCM_16")
    print(f"{args.out}: {len(wave) / sr:.2f} s at {sr} Hz from record {key} ({rec.uri}, segment "
          f"{rec.segment}, {rec.acoustic.shape[0] if args.levels is None else args.levels} levels)")
    return 0
