"""Import a Grad-TTS checkpoint released by its authors (huawei-noah/Speech-Backbones) as a tts run folder.

    python tools/import_gradtts.py grad-tts.pt runs/tts/imported-ljspeech
    python tools/import_gradtts.py grad-tts-libri-tts.pt runs/tts/imported-libritts
    python tools/import_gradtts.py grad-tts-old.pt runs/tts/imported-old --pe-scale 1
    python tools/import_gradtts.py grad-tts.pt runs/tts/imported-ljspeech --hifigan hifigan.pt
    python recipes/tts/synthesize.py run_dir=runs/tts/imported-ljspeech text="Here I am." length_scale=0.91 \
        vocoder.kind=hifigan vocoder.source=runs/tts/imported-ljspeech/vocoder

Sizes, speaker count and encoder conditioning are read from the weights. By default the decoder runs exactly as
the authors trained it (--attention-padding include); --attention-padding ignore switches to robust_gen's
padding-free linear attention. Fine-tune with recipes/tts/train.py init_from=OUT_DIR. --hifigan also converts the
authors' HiFi-GAN (checkpts/hifigan.pt; same architecture as SpeechBrain's HifiganGenerator) into OUT_DIR/vocoder.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()

import argparse
import json
import logging
from pathlib import Path

from robust_gen.speech.gradtts.convert import (
    load_authors_model,
    read_state_dict,
    write_authors_hifigan,
    write_imported_run,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the authors' .pt (torch.save(model.state_dict())) or a .safetensors")
    parser.add_argument("out_dir")
    parser.add_argument("--pe-scale", type=float, default=1000.0, help="1 for grad-tts-old.pt, else 1000")
    parser.add_argument("--attention-padding", choices=["include", "ignore"], default="include")
    parser.add_argument("--speakers", help="a text file with one speaker name per line, in id order")
    parser.add_argument("--hifigan", help="the authors' hifigan.pt, converted into OUT_DIR/vocoder")
    parser.add_argument("--hifigan-config", help="its config.json (default: the authors' hifigan-config.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, config = load_authors_model(read_state_dict(args.checkpoint), pe_scale=args.pe_scale,
                                       attention_padding=args.attention_padding)
    speakers = None
    if args.speakers:
        speakers = [line.strip() for line in Path(args.speakers).read_text().splitlines() if line.strip()]
    print(write_imported_run(model, config, args.out_dir, speakers=speakers, source=args.checkpoint))
    if args.hifigan:
        hifigan_config = json.loads(Path(args.hifigan_config).read_text()) if args.hifigan_config else None
        print(write_authors_hifigan(args.hifigan, Path(args.out_dir) / "vocoder", hifigan_config))


if __name__ == "__main__":
    main()
