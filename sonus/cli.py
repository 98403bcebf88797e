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

Any config key can be overridden; add --cfg to print the composed config and exit.
"""

PREPARE = ("synth", "ssi", "librispeech", "fsdd", "feature_synth")
DECODE = ("rnnt", "two_pass")


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
    else:
        from sonus.data.recipes.fsdd import prepare_fsdd as fn
    print(fn(**kw))


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
    if cmd in ("prepare", "decode"):
        choices = PREPARE if cmd == "prepare" else DECODE
        if not rest or rest[0] not in choices:
            print(f"sonus {cmd}: expected one of {', '.join(choices)}\n\n{USAGE}", file=sys.stderr)
            return 2
        mode, rest = rest[0], rest[1:]
    bad = [a for a in rest if "=" not in a]
    if bad:
        print(f"sonus: arguments must be key=value overrides, got {bad}\n\n{USAGE}", file=sys.stderr)
        return 2
    names = {"prepare": f"prepare/{mode}", "train": "train", "decode": "decode"}
    if cmd not in names:
        print(f"sonus: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    cfg = compose(names[cmd], rest)
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    if cmd == "prepare":
        _prepare(mode, cfg)
    elif cmd == "train":
        import torch

        from sonus.asr.train import train

        if cfg.training.get("num_threads"):
            torch.set_num_threads(int(cfg.training.num_threads))
        out = train(cfg)
        print(f"checkpoints, tokenizer and config in {out}; plots in {out / 'plots'}")
    else:
        from sonus.asr.infer import run_decode

        run_decode(mode, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
