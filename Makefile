# sonus: `make demo` trains and evaluates the two-pass recognizer on the built-in corpus;
# `make test` runs the test suite. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SYNTH   ?= data/synth
EXP     ?= exp/demo
UTTS    ?= 12000
# more training sentences than the 12k corpus: dev and test are the 12k corpus' own
EXTRA   ?= 96000
# the decoders' lexicon LM: the training transcripts' words (weight and word bonus picked on dev)
LM      ?= decoding.lm.text=$(SYNTH)/train.jsonl decoding.lm.weight=0.2 decoding.lm.word_bonus=0

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/sonus prepare synth output_dir=$(SYNTH) num_utterances=$(UTTS) seed=42 extra_train=$(EXTRA)
	$(BIN)/sonus train experiment=demo data.root=$(SYNTH) training.output_dir=$(EXP)
	$(BIN)/sonus decode rnnt model.checkpoint=$(EXP)/best.ckpt data.test_manifest=$(SYNTH)/test.jsonl \
		decoding.beam_size=4 $(LM) output_path=$(EXP)/decode_rnnt.jsonl
	$(BIN)/sonus decode two_pass model.checkpoint=$(EXP)/best.ckpt data.test_manifest=$(SYNTH)/test.jsonl \
		data.dev_manifest=$(SYNTH)/dev.jsonl decoding.tune=true "decoding.tune_length_bonus=[0,0.25,0.5,1]" decoding.second_pass=union \
		decoding.beam_size_rnnt=4 decoding.beam_size_las=8 $(LM) output_path=$(EXP)/decode_2pass.jsonl
	$(BIN)/python -m sonus.asr.report $(EXP)

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) data exp
