"""`embed-text`: the MuLan text tokens (M_T) of captions."""
from __future__ import annotations

import json


def add_args(p) -> None:
    from tokenmill.pipelines.options import add_embed_text_args

    p.description = ("Embed each TEXT with the MuLan model's text tower and quantize it with the RVQ that "
                     "quantizes the audio windows, so the tokens are the ones a text-to-music model is conditioned "
                     "on. Prints one line per text: the text, a tab, its tokens separated by spaces (or JSON lines "
                     "with --json). Trainers: tokenmill.tokenizers.mulan.load_text_tokenizer(model, path, "
                     "codebook) returns the same callable.")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    add_embed_text_args(p)
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"text", "tokens", "codebook_id", "model"}')


def run(args, beam_args: list[str]) -> int:
    from tokenmill.tokenizers.mulan import load_text_tokenizer

    tok = load_text_tokenizer(args.mulan_model, args.mulan_path, args.mulan_codebook,
                              batch_size=args.mulan_batch_size)
    codes = tok(list(args.texts))
    for text, row in zip(args.texts, codes):
        if args.json:
            print(json.dumps({"text": text, "tokens": row.tolist(), "codebook_id": tok.rvq.id,
                              "model": tok.model.name}, ensure_ascii=False))
        else:
            print(f"{text}\t{' '.join(str(int(t)) for t in row)}")
    return 0
