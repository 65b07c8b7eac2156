"""The recipe that builds the training and benchmark corpora of tokenmill's built-in models.

    python -m scripts.corpus.build --target small|large|xl --out DIR   (build_corpus.sh installs the tools)

Modules, in the order a build uses them:
  packages       the Debian packages (version, where the music is, skip rules, licence, game)
  debian         apt-get download into a cache, extract only the music, copy the licences
  scan, tags     which files are tracks, their tags and metadata files, captions, duplicates
  score_catalog  music21 categories, General MIDI ensembles, render-job planning, render captions
  score_job      one render: score -> MIDI -> FluidSynth -> trimmed, normalized audio
  records        manifest lines and summary.json
  small, large   the two corpus layouts; build: the CLI
  score_render   (separate) tunes rendered per instrument with per-frame ground truth, for benches
"""
