"""Grammar-constrained decoding with xgrammar: what a request asks for (``GrammarSpec``), the
vocabulary as xgrammar reads it, compiling off the engine thread, and per-sequence matcher state
whose token bitmasks the sampler applies to the whole batch at once."""
