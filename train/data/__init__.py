"""Input pipeline: corpora, tokenizers, prepared shards and the Grain loader."""
