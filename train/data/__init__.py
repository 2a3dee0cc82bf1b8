"""Input pipeline: corpora, tokenizers, prepared shards and the Grain loader.

Modules, one job each:
  sources.py    named corpora (embedded, text:, jsonl:, parquet:, hf:, synthetic:) + fingerprint
  synthetic.py  order-k Markov language with a closed-form entropy rate (the true loss floor)
  split.py      train/val split by a hash of each document's id, per domain
  tokenizer.py  byte / byte-level BPE / SentencePiece behind one interface; BPE training CLI
  store.py      on-disk format: ArrayRecord shards of token chunks + sidecars; integrity checks
  prepare.py    tokenize a source once into shards + manifest (parallel, resumable) and its CLI
  pipeline.py   packing, shuffling, per-process batches, exact-resume iterator, eval batches;
                `load_for_training` is the trainer's single entry point
  bench.py      loader throughput benchmark (prints)
"""
