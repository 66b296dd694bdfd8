"""Export an image-recipe run as a diffusers pipeline folder.

    python tools/export.py RUN_DIR OUT_DIR [--checkpoint latest|STEP] [--weights ema|model]

Text-conditional runs of model=pretrained become a StableDiffusionPipeline (LoRA runs also get OUT_DIR/lora for
load_lora_weights), class-conditional runs a robust_gen ClassConditionalPipeline; both reload with
DiffusionPipeline.from_pretrained(OUT_DIR) (the second after `import robust_gen.image.pipeline`).
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()

import argparse
import logging

from robust_gen.image.export import export_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--checkpoint", default="latest", help="'latest' or a step number")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    print(export_run(args.run_dir, args.out_dir, checkpoint=checkpoint, weights=args.weights))


if __name__ == "__main__":
    main()
