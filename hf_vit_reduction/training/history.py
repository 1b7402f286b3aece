"""A run's evaluations, one row per epoch, and the paper's stability figures: peak epoch, peak and final top-1, Δ(P→F)."""

from dataclasses import dataclass, field


@dataclass
class RunHistory:
    rows: list[dict] = field(default_factory=list)

    def add(self, row: dict) -> bool:
        """Record one evaluation; True when its reported top-1 is a new peak."""
        is_peak = not self.rows or row["top1"] > self.peak["top1"]
        self.rows.append(row)
        return is_peak

    @property
    def peak(self) -> dict:
        # The first epoch that reaches the maximum is the peak, as the paper counts it.
        return max(self.rows, key=lambda row: (row["top1"], -row["epoch"]))

    def summary(self) -> dict:
        if not self.rows:
            return {}
        peak, final = self.peak, self.rows[-1]
        return {
            "final_top1": final["top1"],
            "final_top5": final["top5"],
            "peak_top1": peak["top1"],
            "peak_top5": peak["top5"],
            "peak_epoch": peak["epoch"],
            "delta_peak_final": peak["top1"] - final["top1"],
        }

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(row) for row in state["rows"]]
