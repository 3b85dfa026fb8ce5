"""Distribution alignment (method §4): capture target-LLM answers, tune the small LM on them.

* :mod:`proxy.alignment.pairs`: the JSONL pair format, shared by capture and training.
* :mod:`proxy.alignment.capture`: opt-in, sampled capture of (messages, answer) pairs in the
  proxy, written off the event loop to size-capped, rotated per-tenant files.
* :mod:`proxy.alignment.train`: ``linguagate align``'s training loop (plain torch).
* :mod:`proxy.alignment.evaluate`: held-out perplexity and compressed-prompt likelihood.

Captured files contain prompt and answer text: they are as sensitive as the traffic itself.
"""
