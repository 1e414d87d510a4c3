"""The seven stages, one module each, and the planner that runs what is stale.

```
segment -> features -> pretrain -> calibrate -> pseudo_labels -> train -> evaluate
```
(without pretrain and calibrate where the pseudo-labels are released ones: `pipeline_stages`)
- `planner`: fingerprints (settings + upstream + the code each stage runs), fresh / stale /
  missing / unused status, plans, `run_stage` / `run_pipeline` and the stage records. Imports no torch.
- `segment`, `features`, `pretrain`, `calibrate`, `pseudo_labels`, `train`, `evaluate`: each
  stage's `run(catalog, out_dir, progress) -> StageResult` and its fan-out helpers; a stage's
  code fingerprint covers its module and the uwav modules it imports, nothing else.
- `inputs`: reading stage inputs from the stores; `promotion`: the current model;
  `parse`: `uwav parse` with the current model.

This package exports the planner's API; import a stage's module for its own helpers.
"""

from uwav.errors import StageError
from uwav.stages.planner import (
    STAGE_UPSTREAM,
    STAGES,
    StageResult,
    StageStatus,
    compute_fingerprints,
    pipeline_stages,
    plan,
    run_pipeline,
    run_stage,
    stage_code_files,
    stage_record,
    stage_status,
    stage_upstream,
    state_dir,
)

__all__ = [
    "STAGES",
    "STAGE_UPSTREAM",
    "StageError",
    "StageResult",
    "StageStatus",
    "compute_fingerprints",
    "pipeline_stages",
    "plan",
    "run_pipeline",
    "run_stage",
    "stage_code_files",
    "stage_record",
    "stage_status",
    "stage_upstream",
    "state_dir",
]
