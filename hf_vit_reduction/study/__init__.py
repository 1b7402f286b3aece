"""Study tools: the paper's report, the small-scale reproduction, benchmarks and post-hoc reduction quality."""
