"""Release stage: is the run's model good enough, and if so, publish it; then explain the run.

`gate` (the promote verb: the decision), `evidence` (its checked inputs), `registry` (models/<name>/
versions, the `current` link, history), `model_card`, `coverage` (Edge TPU op counts), `metrics`
(one definition of a number, its format and the quantization drop), `report/` (the report verb).
"""
