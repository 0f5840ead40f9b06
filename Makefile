# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements-dev.txt
	.venv/bin/pip install -q --no-deps -e .
	# LLaVA's own scoring scripts, the reference of tests/test_eval_metrics_*.py. --no-deps: its
	# pins (torch 2.0, transformers 4.36) would replace ours; the scripts need none of them.
	.venv/bin/pip install -q --no-deps llava-torch==1.2.2.post1
	touch $(VENV_STAMP)

# Optional: the TPU compiler for launch/plan.py (exact TPU memory/FLOPs without a TPU).
.libtpu: $(VENV_STAMP)
	.venv/bin/pip install -q --no-deps --target .libtpu "libtpu==0.0.42.1"

.PHONY: venv demo serve test test-fast libtpu
libtpu: .libtpu

venv: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) launch/demo.py --workdir runs/demo

# The demo's fine-tuned model behind the OpenAI API and the web chat (run `make demo` first).
serve: $(VENV_STAMP)
	$(PY) launch/serve.py --checkpoint runs/demo/finetune/sgv

test: $(VENV_STAMP)
	$(PY) -m pytest tests -q -ra --durations=15

test-fast: $(VENV_STAMP)
	$(PY) -m pytest tests -q -m "not slow"
