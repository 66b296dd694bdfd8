"""Speech data: audio I/O, mel features and their cache, filelists, the embedded espeak-ng corpus, the training set.

* :mod:`~robust_gen.speech.data.audio`: reading, checking and writing waveforms;
* :mod:`~robust_gen.speech.data.mel`: HiFi-GAN-compatible log-mel spectrograms;
* :mod:`~robust_gen.speech.data.mel_cache`: the on-disk mel cache;
* :mod:`~robust_gen.speech.data.filelists`: ``path|text|speaker`` filelists, LJSpeech and LibriTTS layouts;
* :mod:`~robust_gen.speech.data.espeak` and :mod:`~robust_gen.speech.data.corpus`: many distinct voices
  synthesised offline by espeak-ng, the recipe's embedded default;
* :mod:`~robust_gen.speech.data.dataset`: the training set (corruption applied, bad utterances counted).
"""
