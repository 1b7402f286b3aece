"""Study tools: the paper's report, the small-scale reproduction, benchmarks and post-hoc reduction quality. Needs
the `study` extra (each command says so in one line when it is missing)."""
