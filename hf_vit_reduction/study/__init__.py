"""Study tools: the paper's report, the small-scale reproduction, benchmarks and post-hoc reduction quality. Needs
the `study` extra."""

from ..command_line import require_extra

require_extra("study", command="the study tools")
