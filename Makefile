# Set-up and everyday commands. Every target creates (or reuses) the virtual environment in .venv.
# On a machine without an NVIDIA GPU the CPU build of torch is installed (a plain `pip install
# torch` would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CPU_TORCH ?= torch==2.13.0

.PHONY: install demo demo-eval test lint format bench gpu-wheels clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q "$(CPU_TORCH)"; fi
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The main job on the embedded demo: recipes/demo.yaml, a teacher and three students on
# DEMO_RANKS ranks (CPU ranks here, GPUs where there are some). The demo corpus is built on
# first use by the pipeline's own commands; runs/demo/ holds the result.
# DEMO_FAMILY=modernbert: every model a ModernBERT (recipes/demo_modernbert.yaml -> runs/demo-modernbert),
# on the demo corpus with a byte-level BPE tokenizer trained on it (data/demo-bpe).
DEMO_RANKS ?= 2
DEMO_FAMILY ?= bert
DEMO_RECIPE := $(if $(filter bert,$(DEMO_FAMILY)),recipes/demo.yaml,recipes/demo_$(DEMO_FAMILY).yaml)
DEMO_RUN := $(if $(filter bert,$(DEMO_FAMILY)),runs/demo,runs/demo-$(DEMO_FAMILY))
DEMO_DATA := $(if $(filter bert,$(DEMO_FAMILY)),data/demo,data/demo-bpe)
DEMO_TEACHER := $(if $(filter bert,$(DEMO_FAMILY)),data/demo/teacher,$(DEMO_DATA)/teacher-$(DEMO_FAMILY))
demo: install
	$(BIN)/deepspeed --num_gpus $(DEMO_RANKS) trainer/main.py --ds_config ds_configs/zero2.json \
	    --recipe $(DEMO_RECIPE)

# The downstream task in miniature: `python -m evaluation` fine-tunes the demo's teacher, students
# and twins on the demo's NER datasets ($(DEMO_DATA)/datasets: diseases, chemicals and genes under the
# names of the paper's NCBI-disease, BC5CDR-chem and BC2GM) -> runs/demo/eval/results.md, chart.png.
# lr 1e-3, not the paper's 5e-5: at 5e-5 the 0.2M-parameter students do not train in 5 epochs.
DEMO_EVAL_SEEDS ?= 1
DEMO_MODELS := DistilBioBERT DistilBioBERT-MLM CompactBioBERT CompactBioBERT-MLM TinyBioBERT TinyBioBERT-MLM
demo-eval: demo
	$(BIN)/python -m evaluation run --models teacher=$(DEMO_TEACHER) \
	    $(foreach m,$(DEMO_MODELS),$(m)=$(DEMO_RUN)/export/$(m)) --tasks ner \
	    --datasets NCBI-disease,BC5CDR-chem,BC2GM --data $(DEMO_DATA)/datasets \
	    --output $(DEMO_RUN)/eval --seeds $(DEMO_EVAL_SEEDS) --rerun-stale ner.lr=1e-3

# Two pytest workers (pytest-xdist), the slow tests handed out first (tests/conftest.py): most
# tests wait on subprocesses and file I/O, so two workers on two cores finish sooner than one.
# TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/run.py --quick

# The wheels benchmarks/gpu_check.sh installs on a GPU machine without network: DeepSpeed (built
# here) and what else that machine lacks, at this venv's versions, for its Python (GPU_PYTHON).
# Run on a machine with network and take the folder along with the checkout: 11 wheels, 19 MB.
GPU_PYTHON ?= 3.12
GPU_WHEELS ?= .whl
GPU_PACKAGES := hjson pydantic pydantic-core annotated-types typing-inspection typing_extensions \
	regex webdataset braceexpand transformers
PINNED = $(BIN)/python -c 'import sys; from importlib.metadata import version as v; \
	print(" ".join(f"{n}=={v(n)}" for n in sys.argv[1:]))'
gpu-wheels: install
	mkdir -p $(GPU_WHEELS)
	$(BIN)/pip wheel -q --no-deps -w $(GPU_WHEELS) $$($(PINNED) deepspeed)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d $(GPU_WHEELS) $$($(PINNED) $(GPU_PACKAGES))
	ls $(GPU_WHEELS)

# Removes only what this checkout made, each known by its own record: the venv by .installed
# (make install), the demo corpus by .demo.json (xml/.complete.json before that record existed),
# a run directory by the trainer's .lock or recipe.resolved.yaml, pytest's cache by CACHEDIR.TAG.
# A folder of the same name without its record is the user's: it stays, said in one line.
REMOVE_OWN = remove() { dir=$$1; shift; [ -e "$$dir" ] || return 0; \
	for record; do [ -e "$$dir/$$record" ] && { echo "rm -rf $$dir"; rm -rf "$$dir"; return 0; }; \
	done; echo "make clean: kept $$dir: no $$(echo "$$@" | sed 's/ / or /g') in it, so this" \
	"checkout did not make it; remove it yourself if you mean to"; }
RUN_RECORDS := .lock recipe.resolved.yaml
clean:
	@$(REMOVE_OWN); \
	remove "$(VENV)" .installed; \
	remove data/demo .demo.json xml/.complete.json; \
	remove data/demo-bpe .demo.json xml/.complete.json; \
	for run in runs/demo runs/demo.stale-* runs/demo-teacher runs/demo-teacher.stale-*; do \
	  remove "$$run" $(RUN_RECORDS); done; \
	remove .pytest_cache CACHEDIR.TAG
