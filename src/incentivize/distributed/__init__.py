"""Scale-out: rollout workers on Ray (`rollout.RolloutPool`). Imported only when a run asks for workers,
so a single-process run never imports Ray."""
