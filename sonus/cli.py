"""`sonus` command line: `sonus COMMAND [MODE] key=value ...` with Hydra overrides.

Parses, composes the config, then calls library functions; no logic lives here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

USAGE = """usage: sonus COMMAND [MODE] [key=value ...]

  sonus prepare synth output_dir=data/synth num_utterances=12000 seed=42
  sonus prepare ssi output_dir=data/ssi train_size=8000 dev_size=1500 test_size=1500 seed=42 [source=DIR]
  sonus prepare librispeech source=DIR output_dir=DIR [dev_speakers=N]
  sonus prepare fsdd source=DIR output_dir=DIR
  sonus prepare feature_synth output_dir=data/features [dim=37]   (feature sequences, no audio)
  sonus train experiment=joint_ssi [training.output_dir=...] [data.train_manifest=...]
  sonus decode rnnt model.checkpoint=CKPT data.test_manifest=M decoding.beam_size=4 output_path=OUT
  sonus decode two_pass model.checkpoint=CKPT data.test_manifest=M decoding.beam_size_rnnt=4 decoding.beam_size_las=4 output_path=OUT
  sonus prepare librimix source=LIBRISPEECH_DIR output_dir=data/librimix [sample_rate=8000] [noise_dir=DIR] [reverb=true]
  sonus train experiment=sep_convtasnet [data=polsess data.root=DIR]   (also sep_dprnn, sep_sepformer, sep_spmamba)
  sonus evaluate separation checkpoint=CKPT [variant=SER] [metrics.pesq=false] [metrics.stoi=false] output=results.csv
  sonus separate checkpoint=CKPT input=FILE_OR_DIR output_dir=DIR
  sonus evaluate tokenizer checkpoint=CKPT input=test.wav output=recon.wav   |   ... analyze=true test_dir=DIR
  sonus transcribe checkpoint=ASR_CKPT [separation_checkpoint=SEP_CKPT] input=FILE_OR_DIR output_path=OUT.jsonl
  sonus train experiment=tokenizer_librispeech data.source=LIBRISPEECH_DIR   (speech tokenizer)
  sonus tokenize checkpoint=CKPT input=in.wav output=codes.npy [n_q=4]   /   sonus detokenize checkpoint=CKPT input=codes.npy output=out.wav
  sonus sweep experiment=sep_dprnn sweep=sep_dprnn [sweep.n_trials=20]   (Optuna; rerun to continue the study)
  sonus serve checkpoint=ASR_CKPT [separation_checkpoint=...] [tokenizer_checkpoint=...] host=127.0.0.1 port=8000
  sonus export checkpoint=ASR_CKPT format=onnx output_dir=DIR

Any config key can be overridden; add --cfg to print the composed config and exit.
"""

PREPARE = ("synth", "ssi", "librispeech", "fsdd", "feature_synth", "librimix")
DECODE = ("rnnt", "two_pass")
EVALUATE = ("separation", "tokenizer")
MODES = {"prepare": PREPARE, "decode": DECODE, "evaluate": EVALUATE}


def config_dir() -> Path:
    """configs/ of the source tree (editable install), or $SONUS_CONFIG_DIR."""
    env = os.environ.get("SONUS_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"config folder not found: {path} (set SONUS_CONFIG_DIR)")
    return path


def compose(name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="sonus"):
        return hydra_compose(config_name=name, overrides=overrides)


def _prepare(mode: str, cfg: DictConfig) -> None:
    kw = OmegaConf.to_container(cfg, resolve=True)
    if mode == "synth":
        from sonus.data.recipes.synth import prepare_synth as fn
    elif mode == "ssi":
        from sonus.data.recipes.ssi import prepare_ssi as fn
    elif mode == "librispeech":
        from sonus.data.recipes.librispeech import prepare_librispeech as fn
    elif mode == "feature_synth":
        from sonus.data.recipes.feature_synth import prepare_feature_synth as fn
    elif mode == "librimix":
        from sonus.data.recipes.librimix import prepare_librimix as fn
    else:
        from sonus.data.recipes.fsdd import prepare_fsdd as fn
    print(fn(**kw))


def _train_fn(cfg: DictConfig):
    """The training function of the config's task."""
    task = cfg.get("task", "asr")
    if task == "separation":
        from sonus.separation.train import train
    elif task == "codec":
        from sonus.codec.train import train
    elif task == "asr":
        from sonus.asr.train import train
    else:
        raise ValueError(f"task must be asr, separation or codec, got {task!r}")
    return train


def _sweep(cfg: DictConfig, overrides: list[str]) -> None:
    from sonus.train.sweep import SweepConfig, run_sweep

    s, sep = cfg.sweep, cfg.get("task", "asr") == "separation"
    out = Path(cfg.training.output_dir)
    sc = SweepConfig(
        study_name=s.study_name or cfg.wandb.get("run_name") or "sonus",
        storage=s.storage or f"sqlite:///{out / 'sweep.db'}",
        metric=s.metric or ("val/si_sdr" if sep else "val/select"),
        direction=s.direction or ("maximize" if sep else "minimize"),
        n_trials=int(s.n_trials), params=OmegaConf.to_container(s.params, resolve=True), seed=int(s.seed),
        min_resource=int(s.min_resource), max_resource=s.max_resource, reduction_factor=int(s.reduction_factor),
    )  # fmt: skip
    train = _train_fn(cfg)

    def one(values: dict, trial_dir: str, callbacks: list) -> None:
        drawn = [f"{k}={v}" for k, v in values.items()]
        train(compose("train", [*overrides, *drawn, f"training.output_dir={trial_dir}", "training.resume=false"]), callbacks)

    study = run_sweep(sc, one, out)
    done = [t for t in study.trials if t.value is not None]
    if done:
        print(f"best of {len(done)} trials: {sc.metric} = {study.best_value:.4f} with {study.best_params}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    cmd, rest = argv[0], argv[1:]
    mode = None
    if cmd in MODES:
        choices = MODES[cmd]
        if not rest or rest[0] not in choices:
            print(f"sonus {cmd}: expected one of {', '.join(choices)}\n\n{USAGE}", file=sys.stderr)
            return 2
        mode, rest = rest[0], rest[1:]
    bad = [a for a in rest if "=" not in a]
    if bad:
        print(f"sonus: arguments must be key=value overrides, got {bad}\n\n{USAGE}", file=sys.stderr)
        return 2
    names = {"prepare": f"prepare/{mode}", "train": "train", "sweep": "train", "decode": "decode", "evaluate": "evaluate", "separate": "separate", "transcribe": "transcribe", "tokenize": "tokenize", "detokenize": "tokenize", "serve": "serve", "export": "export"}
    if cmd not in names:
        print(f"sonus: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    cfg = compose(names[cmd], rest)
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    threads = cfg.training.get("num_threads") if cmd in ("train", "sweep") else cfg.get("num_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if cmd == "prepare":
        _prepare(mode, cfg)
    elif cmd == "train":
        out = _train_fn(cfg)(cfg)
        print(f"checkpoints and config in {out}; plots in {out / 'plots'}")
    elif cmd == "sweep":
        _sweep(cfg, rest)
    elif cmd == "evaluate" and mode == "tokenizer":
        from sonus.codec.infer import run_evaluate_tokenizer

        run_evaluate_tokenizer(cfg)
    elif cmd == "evaluate":
        from sonus.separation.infer import run_evaluate

        run_evaluate(cfg)
    elif cmd in ("tokenize", "detokenize"):
        from sonus.codec.infer import Tokenizer, detokenize_file, tokenize_file

        tok = Tokenizer.from_checkpoint(cfg.checkpoint)
        if cmd == "tokenize":
            codes = tokenize_file(tok, cfg.input, cfg.output, cfg.get("n_q"))
            print(f"{cfg.output}: codes {codes.shape} ({tok.bitrate(codes.shape[0]):.0f} bit/s)")
        else:
            wave = detokenize_file(tok, cfg.input, cfg.output)
            print(f"{cfg.output}: {wave.shape[0] / tok.sample_rate:.2f} s at {tok.sample_rate} Hz")
    elif cmd == "transcribe":
        from sonus.asr.decoding import DecodingOptions
        from sonus.pipelines.separate_transcribe import transcribe

        d = cfg.decoding
        opts = DecodingOptions(strategy=d.strategy, beam_size=int(d.beam_size), second_pass=d.second_pass, las_weight=float(d.las_weight))
        res = transcribe(cfg.checkpoint, cfg.input, cfg.output_path, cfg.separation_checkpoint, opts, cfg.streams_dir)
        for t in res:
            print(f"{t.file} [{t.stream}]: {t.text}")
        print(f"written to {cfg.output_path}")
    elif cmd == "separate":
        from sonus.separation.infer import run_separate

        run_separate(cfg)
    elif cmd == "serve":
        from sonus.serve import run_serve

        run_serve(cfg)
    elif cmd == "export":
        from sonus.export import run_export

        run_export(cfg)
    else:
        from sonus.asr.infer import run_decode

        run_decode(mode, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
