# clue-run: `make install` sets up .venv; `make demo` installs and runs the main job; `make test` runs the fast
# tests (slow ones deselected); `make test-all` runs every test (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel by default: an unpinned torch can pull a multi-GB CUDA build. Override for a GPU machine.
TORCH_SPEC ?= torch==2.13.0
# Real CLUE/FewCLUE data (gzip); the runner also reads $CLUE_DATA_DIR or ./data.
CLUE_DATA_DIR ?= $(abspath ../shared/data)
export CLUE_DATA_DIR

.PHONY: install demo test test-all clean

$(BIN)/clue-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/clue-run

demo: install
	$(BIN)/clue-run train --config configs/demo.yaml

test: install
	$(BIN)/python -m pytest -m "not slow"

test-all: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

# Regenerate docs/RESULTS.md, STS.md, STRUCTURED.md, METHODS.md, PROMPTS.md, MULTITASK.md and LONG_INPUTS.md (and pictures) from the runs kept in results/examples/.
.PHONY: docs
REPORT_H100 := results/examples/h100 --throughput --baselines bert4keras,fewclue --format markdown
REPORT_STS := results/examples/cpu-sts --task stsb,lcqmc,pawsx,bq,atec --baselines cosent,unsup-sts --format markdown
REPORT_STRUCTURED := results/examples/cpu-structured --task cmrc2018,c3,fewclue_chid,cluener --throughput --baselines bert4keras,fewclue --format markdown
REPORT_METHODS := results/examples/fewclue-methods --format markdown
REPORT_PROMPTS := results/examples/cpu-prompts --task fewclue_eprstmt,fewclue_tnews,fewclue_csldcp,fewclue_bustm,fewclue_ocnli,fewclue_csl --baselines fewclue --format markdown
REPORT_MULTITASK := results/examples/cpu-multitask --task fewclue_tnews,fewclue_csldcp,fewclue_iflytek --throughput --format markdown
REPORT_MULTITASK_300 := results/examples/cpu-multitask-300 --task fewclue_tnews,fewclue_csldcp,fewclue_iflytek --throughput --format markdown
REPORT_LONG := results/examples/cpu-long --task cmrc2018 --throughput --format markdown
REPORT_LONG_F1 := results/examples/cpu-long --task cmrc2018 --metric cmrc_f1 --format markdown
docs: install
	{ cat docs/RESULTS.head.md; echo '```'; echo '$$ clue-run report $(REPORT_H100)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_H100) --plot docs/results-h100.png; } > docs/RESULTS.md
	{ cat docs/STS.head.md; echo '```'; echo '$$ clue-run report $(REPORT_STS)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_STS) --plot docs/sts-cpu.png; } > docs/STS.md
	{ cat docs/STRUCTURED.head.md; echo '```'; echo '$$ clue-run report $(REPORT_STRUCTURED)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_STRUCTURED) --plot docs/structured-cpu.png; } > docs/STRUCTURED.md
	{ cat docs/METHODS.head.md; echo '```'; echo '$$ clue-run report $(REPORT_METHODS) --compare finetune'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_METHODS) --compare finetune --plot docs/methods-compare.png; echo; \
	  echo '```'; echo '$$ clue-run report $(REPORT_METHODS) --compare finetune --scored-on heldout'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_METHODS) --compare finetune --scored-on heldout; echo; \
	  echo '```'; echo '$$ clue-run report $(REPORT_METHODS) --throughput'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_METHODS) --throughput; echo; cat docs/METHODS.costs.md; } > docs/METHODS.md
	{ cat docs/PROMPTS.head.md; echo '```'; echo '$$ clue-run report $(REPORT_PROMPTS)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_PROMPTS) --plot docs/prompts-cpu.png; } > docs/PROMPTS.md
	{ cat docs/MULTITASK.head.md; echo '```'; echo '$$ clue-run report $(REPORT_MULTITASK) --compare finetune'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_MULTITASK) --compare finetune --plot docs/multitask-compare.png; echo; \
	  echo '```'; echo '$$ clue-run report $(REPORT_MULTITASK_300)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_MULTITASK_300); } > docs/MULTITASK.md
	$(BIN)/clue-run report $(REPORT_MULTITASK) --plot docs/multitask-cpu.png > /dev/null
	{ cat docs/LONG_INPUTS.head.md; echo '```'; echo '$$ clue-run report $(REPORT_LONG)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_LONG); echo; echo '```'; echo '$$ clue-run report $(REPORT_LONG_F1)'; echo '```'; echo; \
	  $(BIN)/clue-run report $(REPORT_LONG_F1); } > docs/LONG_INPUTS.md
