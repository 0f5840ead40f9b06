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

# lmms-eval's evaluation path for the lmms-eval backend and its test, beside the venv (not in it:
# lmms-eval's full dependency set would move our pins); see requirements-lmms.txt. Put .lmms on
# PYTHONPATH to run `python -m lmms_eval --model sgv_jax ...` with the venv's python.
LMMS_STAMP := .lmms/.installed

$(LMMS_STAMP): requirements-lmms.txt $(VENV_STAMP)
	rm -rf .lmms
	.venv/bin/pip install -q --no-deps --target .lmms -r requirements-lmms.txt
	touch $(LMMS_STAMP)

# Optional: the TPU compiler for launch/plan.py (exact TPU memory/FLOPs without a TPU).
.libtpu: $(VENV_STAMP)
	.venv/bin/pip install -q --no-deps --target .libtpu "libtpu==0.0.42.1"

.PHONY: venv demo serve test test-fast libtpu lmms
libtpu: .libtpu

lmms: $(LMMS_STAMP)

venv: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) launch/demo.py --workdir runs/demo

# The demo's fine-tuned model behind the OpenAI API and the web chat (run `make demo` first).
serve: $(VENV_STAMP)
	$(PY) launch/serve.py --checkpoint runs/demo/finetune/sgv

# Under tcmalloc when the machine has it (sgv_jax/allocator.py: fewer page faults per XLA run).
test: $(VENV_STAMP) $(LMMS_STAMP)
	$(PY) -m sgv_jax.allocator -m pytest tests -q -ra --durations=15

test-fast: $(VENV_STAMP)
	$(PY) -m sgv_jax.allocator -m pytest tests -q -m "not slow"
