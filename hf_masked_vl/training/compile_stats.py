"""What `torch.compile` did in this process: graph breaks and compiled graphs, from `torch._dynamo.utils.counters`.

The counters are process-wide and cumulative; take a `CompileStats.now()` before and subtract it afterwards to see
what one piece of code caused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompileStats:
    """Graph breaks (reason → count) and the number of graphs dynamo compiled."""

    graph_breaks: Counter = field(default_factory=Counter)
    graphs: int = 0

    @classmethod
    def now(cls) -> CompileStats:
        from torch._dynamo.utils import counters

        return cls(Counter(counters["graph_break"]), int(counters["stats"]["unique_graphs"]))

    def __sub__(self, earlier: CompileStats) -> CompileStats:
        return CompileStats(self.graph_breaks - earlier.graph_breaks, self.graphs - earlier.graphs)

    @property
    def graph_break_count(self) -> int:
        return sum(self.graph_breaks.values())

    def __str__(self) -> str:
        text = f"{self.graphs} graph(s) compiled, {self.graph_break_count} graph break(s)"
        reasons = "; ".join(f"{count}x {reason[:160]}" for reason, count in self.graph_breaks.most_common(5))
        return f"{text}: {reasons}" if reasons else text


__all__ = ["CompileStats"]
