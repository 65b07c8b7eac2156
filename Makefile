# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
# this machine's pip config names index folders that do not all exist; pip warns once per package
QUIET_PIP := { grep -v "^WARNING: Location" || true; }
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tokenmill-installed
DEMO := demo-out
DEMO_PORT ?= 8765
# tiny stages on short crops (10 s semantic, 2 s coarse, 1 s fine): one to two minutes each on a 2-core CPU
DEMO_TRAIN := --preset tiny --steps 200 --batch_size 8 --lr 1e-3 --warmup_steps 10 --log_every 25 \
	--semantic_s 10 --coarse_s 2 --fine_s 1 --shuffle_buffer 16
AUDIO := tests/data/audio/*

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: pip takes the CPU wheel from the machine's local wheel folder instead
	# of resolving a multi-GB CUDA build for the unpinned requirement.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --disable-pip-version-check -e . 2>&1 | $(QUIET_PIP)
	# The basic-pitch semantic extractor needs only the ONNX model inside this wheel (torch runs
	# it); its declared requirements would pull tensorflow, hence --no-deps.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps basic-pitch==0.4.0 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

setup: $(STAMP)

# The main job on the bundled real audio, embedded Beam runner, local files, built-in tokenizers
# (melodic semantic features + k-means, built-in SoundStream, built-in MuLan and built-in melody
# model with their packaged weights and packaged RVQs: the tokenize defaults), so the shards hold
# all four streams and the semantic stage trains melody-conditioned; ends by
# decoding one record to a WAV and printing the MuLan text tokens of two captions.
# The bundled audio is 2.6 min (~3.9k frames): too few for k=1024 (FAISS wants >= 39 frames per
# centroid), so the demo fits k=64. Real corpora use the default --num_clusters 1024. (Its 83
# MuLan windows are far too few for a 12 x 1024 RVQ, hence the packaged one.)
demo: setup
	rm -rf $(DEMO)
	$(BIN)/python beam_runner.py fit-codebook --input '$(AUDIO)' --output $(DEMO)/codebooks \
		--num_clusters 64
	$(BIN)/python beam_runner.py tokenize --input '$(AUDIO)' --codebook $(DEMO)/codebooks \
		--captions tests/data/captions.jsonl --output $(DEMO)/dataset --num_shards 2 \
		--valid_fraction 0.2
	$(BIN)/python beam_runner.py verify $(DEMO)/dataset
	$(BIN)/python beam_runner.py decode --dataset $(DEMO)/dataset --output $(DEMO)/decoded.wav
	$(BIN)/python beam_runner.py embed-text "a calm solo piano piece" "fast rock drums and distorted guitar"
	# (the trainers retry the server while it starts: data.fetch retries transient HTTP failures)
	@echo "== SMOKE DEMO of training and generation: tiny models, a few minutes on a CPU, over 2.6 min of"
	@echo "== music. It shows the path (shards over HTTP -> three stage trainers -> text -> WAV) works;"
	@echo "== the generated audio is noise-like, not music. Real training needs hours of audio and a GPU."
	$(BIN)/python -m http.server $(DEMO_PORT) --bind 127.0.0.1 --directory $(DEMO)/dataset \
		> $(DEMO)/http.log 2>&1 & server=$$!; trap 'kill $$server' EXIT; \
	for stage in semantic coarse fine; do \
		$(BIN)/python beam_runner.py train --stage $$stage --data http://127.0.0.1:$(DEMO_PORT)/ \
			--output $(DEMO)/train/$$stage $(DEMO_TRAIN) || exit 1; \
	done
	$(BIN)/python beam_runner.py generate --text "a calm solo piano piece" --checkpoints $(DEMO)/train \
		--output $(DEMO)/generated.wav --seconds 4 --torch_threads 1

test: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python bench/bench_frontend.py
	$(BIN)/python bench/bench_kmeans.py
	$(BIN)/python bench/bench_bytes.py

clean:
	rm -rf $(DEMO) .hypothesis
