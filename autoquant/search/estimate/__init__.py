"""What a plan costs and how wrong it will be, without building it: the per-layer, per-choice error table
(layer_errors.py), the per-layer latency table (latency_table.py), a plan's cost (cost.py: bitops or latency), the
additive error model and its calibration against trials (error_model.py), and the exact one-layer-at-a-time
table (sensitivity.py). All computed once per study and cached on disk."""
